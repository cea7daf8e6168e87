"""Fitting by SVI: the ELBO estimators, temperature and KL schedules, the trainer and its
checkpoints, resource guards, data-parallel plumbing and dead-dimension revival.
"""

from pyro_sdlgm._lazy import submodule_getattr

__getattr__ = submodule_getattr(__name__)
