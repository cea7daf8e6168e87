"""The user classes: `SDLGM` (unsupervised sparse codes) and `SDLGMClassifier` (multi-label
prediction with a predicted count), on one estimator base.
"""

from pyro_sdlgm._lazy import submodule_getattr

__getattr__ = submodule_getattr(__name__)
