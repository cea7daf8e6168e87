"""pyro_sdlgm: the sparse deep latent generative model (SDLGM) in Pyro.

Sparse representations whose number of non-zeros never exceeds ``L0``, with a
per-observation sparsity ``L_i`` drawn, like the support, through Concrete
(Gumbel-Softmax) distributions, trained by amortized SVI.
"""

from importlib import import_module

from pyro_sdlgm._lazy import submodule_getattr

# Names are imported on first use (PEP 562), so that `import pyro_sdlgm` and the command
# line's --help stay fast: torch, Pyro and scikit-learn load only when a name that needs them is used.
_EXPORTS = {
    "SDLGMClassifier": "estimators.classifier",
    "ClassifierConfig": "estimators.classifier",
    "DataConfig": "config",
    "ModelConfig": "estimators.sdlgm",
    "MultiLabelDataConfig": "config",
    "RunConfig": "app.run_config",
    "TrainConfig": "config",
    "load_run_config": "app.run_config",
    "ExpRelaxedCategorical": "model.distributions",
    "SLOT_ESTIMATORS": "model.slot_estimators",
    "SlotEstimator": "model.slot_estimators",
    "register_slot_estimator": "model.slot_estimators",
    "CheckpointError": "exceptions",
    "ConfigError": "exceptions",
    "DataError": "exceptions",
    "DataFormatError": "exceptions",
    "NotFittedError": "exceptions",
    "MissingDependencyError": "exceptions",
    "NumericalError": "exceptions",
    "ResourceError": "exceptions",
    "RunFolderBusyError": "exceptions",
    "SDLGMError": "exceptions",
    "load_plugins": "plugins",
    "UnknownComponentError": "exceptions",
    "GUIDES": "model.guides",
    "AmortizedGuide": "model.guides",
    "GuideParams": "model.guides",
    "MLPGuide": "model.guides",
    "register_guide": "model.guides",
    "LIKELIHOODS": "model.likelihoods",
    "Likelihood": "model.likelihoods",
    "register_likelihood": "model.likelihoods",
    "SDLGMModel": "model.generative",
    "SPARSITY_PRIORS": "model.priors",
    "SUPPORT_PRIORS": "model.priors",
    "VALUE_PRIORS": "model.priors",
    "SparsityPrior": "model.priors",
    "SupportPrior": "model.priors",
    "ValuePrior": "model.priors",
    "register_sparsity_prior": "model.priors",
    "register_support_prior": "model.priors",
    "register_value_prior": "model.priors",
    "SDLGM": "estimators.sdlgm",
    "build_model_and_guide": "estimators.sdlgm",
    "validation_split": "estimators.base",
    "ModelSpec": "model.spec",
}

__version__ = "0.3.0"

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
    "validation_split",
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
    "SLOT_ESTIMATORS",
    "SlotEstimator",
    "register_slot_estimator",
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
    "MissingDependencyError",
    "NumericalError",
    "ResourceError",
    "RunFolderBusyError",
    "CheckpointError",
    "load_plugins",
    "__version__",
]


_submodule = submodule_getattr(__name__)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:  # a subpackage, e.g. pyro_sdlgm.analysis after a plain `import pyro_sdlgm`
        return _submodule(name)
    value = getattr(import_module(f".{module}", __name__), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
