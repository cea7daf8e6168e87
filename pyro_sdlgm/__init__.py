"""pyro_sdlgm: the sparse deep latent generative model (SDLGM) in Pyro.

Sparse representations whose number of non-zeros never exceeds ``L0``, with a
per-observation sparsity ``L_i`` drawn, like the support, through Concrete
(Gumbel-Softmax) distributions, trained by amortized SVI.
"""

from importlib import import_module

# Names are imported on first use (PEP 562), so that `import pyro_sdlgm` and the command
# line's --help stay fast: torch, Pyro and scikit-learn load only when a name that needs them is used.
_EXPORTS = {
    "SDLGMClassifier": "classifier",
    "ClassifierConfig": "config",
    "DataConfig": "config",
    "ModelConfig": "config",
    "MultiLabelDataConfig": "config",
    "RunConfig": "config",
    "TrainConfig": "config",
    "load_run_config": "config",
    "ExpRelaxedCategorical": "distributions",
    "SLOT_ESTIMATORS": "estimators",
    "SlotEstimator": "estimators",
    "register_slot_estimator": "estimators",
    "CheckpointError": "exceptions",
    "ConfigError": "exceptions",
    "DataError": "exceptions",
    "DataFormatError": "exceptions",
    "NotFittedError": "exceptions",
    "NumericalError": "exceptions",
    "ResourceError": "exceptions",
    "SDLGMError": "exceptions",
    "UnknownComponentError": "exceptions",
    "GUIDES": "guides",
    "AmortizedGuide": "guides",
    "GuideParams": "guides",
    "MLPGuide": "guides",
    "register_guide": "guides",
    "LIKELIHOODS": "likelihoods",
    "Likelihood": "likelihoods",
    "register_likelihood": "likelihoods",
    "SDLGMModel": "model",
    "SPARSITY_PRIORS": "priors",
    "SUPPORT_PRIORS": "priors",
    "VALUE_PRIORS": "priors",
    "SparsityPrior": "priors",
    "SupportPrior": "priors",
    "ValuePrior": "priors",
    "register_sparsity_prior": "priors",
    "register_support_prior": "priors",
    "register_value_prior": "priors",
    "SDLGM": "sdlgm",
    "build_model_and_guide": "sdlgm",
    "ModelSpec": "spec",
}

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
    "NumericalError",
    "ResourceError",
    "CheckpointError",
    "__version__",
]


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        try:  # a submodule, e.g. pyro_sdlgm.posterior after a plain `import pyro_sdlgm`
            return import_module(f".{name}", __name__)
        except ModuleNotFoundError:
            raise AttributeError(f"module 'pyro_sdlgm' has no attribute {name!r}") from None
    value = getattr(import_module(f".{module}", __name__), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
