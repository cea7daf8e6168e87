"""The command-line application: `sdlgm train | evaluate | predict | inspect | encode` over run folders.
"""

from pyro_sdlgm._lazy import submodule_getattr

__getattr__ = submodule_getattr(__name__)
