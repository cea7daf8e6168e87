"""pyro_sdlgm: the sparse deep latent generative model (SDLGM) in Pyro.

Sparse representations whose number of non-zeros never exceeds ``L0``, with a
per-observation sparsity ``L_i`` drawn, like the support, through Concrete
(Gumbel-Softmax) distributions, trained by amortized SVI.
"""

from .classifier import SDLGMClassifier
from .config import (
    ClassifierConfig,
    DataConfig,
    ModelConfig,
    MultiLabelDataConfig,
    RunConfig,
    TrainConfig,
    load_run_config,
)
from .distributions import ExpRelaxedCategorical
from .exceptions import (
    CheckpointError,
    ConfigError,
    DataError,
    DataFormatError,
    NotFittedError,
    NumericalError,
    ResourceError,
    SDLGMError,
    UnknownComponentError,
)
from .guides import GUIDES, AmortizedGuide, GuideParams, MLPGuide, register_guide
from .likelihoods import LIKELIHOODS, Likelihood, register_likelihood
from .model import SDLGMModel
from .priors import (
    SPARSITY_PRIORS,
    SUPPORT_PRIORS,
    VALUE_PRIORS,
    SparsityPrior,
    SupportPrior,
    ValuePrior,
    register_sparsity_prior,
    register_support_prior,
    register_value_prior,
)
from .sdlgm import SDLGM, build_model_and_guide
from .spec import ModelSpec

__version__ = "0.1.0"

__all__ = [
    "SDLGM",
    "SDLGMClassifier",
    "ClassifierConfig",
    "MultiLabelDataConfig",
    "SDLGMModel",
    "AmortizedGuide",
    "MLPGuide",
    "GuideParams",
    "ModelSpec",
    "ModelConfig",
    "TrainConfig",
    "DataConfig",
    "RunConfig",
    "load_run_config",
    "build_model_and_guide",
    "ExpRelaxedCategorical",
    "SparsityPrior",
    "SupportPrior",
    "ValuePrior",
    "Likelihood",
    "GUIDES",
    "LIKELIHOODS",
    "SPARSITY_PRIORS",
    "SUPPORT_PRIORS",
    "VALUE_PRIORS",
    "register_guide",
    "register_likelihood",
    "register_sparsity_prior",
    "register_support_prior",
    "register_value_prior",
    "SDLGMError",
    "ConfigError",
    "UnknownComponentError",
    "DataError",
    "DataFormatError",
    "NotFittedError",
    "NumericalError",
    "ResourceError",
    "CheckpointError",
    "__version__",
]
