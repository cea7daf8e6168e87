"""What a fitted model says: posteriors over sparsity as ArviZ data, their inspection and plots,
evaluation terms, the count diagnostics and multi-label metrics.
"""

from pyro_sdlgm._lazy import submodule_getattr

__getattr__ = submodule_getattr(__name__)
