"""The generative model and its guides: site names and sizes (`spec`), distributions, networks,
support arithmetic, the swappable priors, likelihoods, guides and slot gradient estimators
(registries), the unsupervised model (`generative`) and the multi-label one (`conditional`).
"""

from pyro_sdlgm._lazy import submodule_getattr

__getattr__ = submodule_getattr(__name__)
