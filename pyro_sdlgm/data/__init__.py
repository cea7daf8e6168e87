"""Data in: array checks, the unsupervised data sets and the multi-label loaders.
"""

from pyro_sdlgm._lazy import submodule_getattr

__getattr__ = submodule_getattr(__name__)
