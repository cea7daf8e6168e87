"""The supervised (multi-label) SDLGM: labels are the sparse support, predicted with their count.

Data ``(x_i, y_i)``, ``y_i in {0,1}^K``. The prior over the count ``L_i`` and over the
slots is a network of ``x_i`` (:class:`ConditionalSDLGMModel`); the soft support ``s_i``
is formed as in the unsupervised model and the labels are observed through
``y_i ~ Bernoulli(eps + (1 - 2 eps) s_i)``. The guide sees ``(x_i, y_i)``
(:class:`LabelAwareGuide`, a conditional-VAE style posterior), so the KL terms train the
``x``-only networks to predict how many labels an instance has and which. Prediction
uses the ``x``-only networks alone. :class:`PriorAsGuide` uses those networks as the
guide too (an ablation: the ELBO then reduces to the expected log-likelihood).

Sites, their distributions, the slot machinery and the trainer are the unsupervised
model's (``sparsity``, ``slot_1..slot_L0``, ``obs``).

**What training maximizes** (``fit_objective``). In training the labels are observed, and
so are the count ``L_i = |y_i|`` and, up to the label noise, the support. ``"set_bound"``
(the default) uses that: the model observes ``sparsity`` (a categorical over the levels, at
``|y_i|``) and ``obs`` (:class:`~pyro_sdlgm.model.distributions.DistinctDraws`: ``|y_i|`` draws
from the shared slot distribution that are distinct and form ``y_i``), and the guide is
empty, so the ELBO (``Trace_ELBO``, or ``AnalyticKLELBO`` with the same value) is exactly
``-log p(L_i = |y_i| | x_i) - log |y_i|! - sum_{k in y_i} log p_k(x_i)``. That is a lower bound on the log-likelihood of the noiseless model with
Plackett-Luce (without-replacement) slots, needs no Monte-Carlo draw, costs ``N x K`` per
batch (the MLP's cost) and is consistent for precision@k (see ``DistinctDraws``); it needs
shared slot logits (``per_slot=False``). With ``candidates`` the label set is scored under
the slot distribution truncated to each row's shortlist (true labels, hard negatives, random
negatives), which trades that consistency for training on the confusable labels. ``"elbo"`` is the relaxed
two-step process with the label-aware guide described above (the slot sites are sampled;
``sparsity_inference``, ``objective``, ``slot_selection``, ``slot_layout`` and
``num_candidates`` apply). Prediction is the same for both: the ``x``-only networks.

**Shortlist mode** (wide label spaces). Model and guides take an optional
``candidates`` ``(N, C)`` LongTensor of distinct label ids per row (built per batch by
:func:`shortlist_candidates`: the row's true labels, hard negatives and random negatives).
The slot logits ``(N, S, K)`` are then gathered to ``(N, S, C)``, the slot sites have event
shape ``(C,)``, the soft support is over the ``C`` candidates and ``obs`` observes ``y``
gathered on them (event ``(C,)``), so the slot terms cost ``L0 x C`` per row instead of
``L0 x K``. What is approximated: the slot distributions of model and guide are
renormalized over the shortlist (a sampled-softmax-style truncation), so the slot KL terms
are those of the truncated distributions. The likelihood is not approximated: every label
outside the shortlist is a negative (the true labels are always candidates) that the
support cannot reach, so its term is the constant ``log(1 - eps)``, and dropping those
terms shifts the ELBO by ``(K - C) log(1 - eps)`` per row.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, get_args

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.nn import PyroModule

from pyro_sdlgm.model.distributions import DistinctDraws
from pyro_sdlgm.exceptions import ConfigError, DataError
from pyro_sdlgm.model.guides import AmortizedGuide, GuideParams, amortized_slot_logits, amortized_sparsity_dist
from pyro_sdlgm.model.generative import data_plate, relaxed_code, sample_slots
from pyro_sdlgm.model.support_steps import SparseCode
from pyro_sdlgm.model.networks import AmortizedEncoder
from pyro_sdlgm.model.spec import OBS_SITE, SPARSITY_SITE, ModelSpec

#: the ELBO's guides and the training objectives (see the module docstring)
ClassifierGuide = Literal["label_aware", "prior_as_guide"]
FitObjective = Literal["set_bound", "elbo"]
CONDITIONAL_GUIDES = get_args(ClassifierGuide)
FIT_OBJECTIVES = get_args(FitObjective)
#: the share of a shortlist's negatives that are hard negatives (the rest are uniform random ones)
HARD_NEGATIVE_SHARE = 0.5


def _label_network(spec: ModelSpec, input_dim: int, per_slot: bool, hidden: Sequence[int], activation: str,
                   dropout: float = 0.0):
    return AmortizedEncoder(input_dim, spec.latent_dim, spec.num_levels, spec.max_sparsity if per_slot else 1,
                            binary=True, hidden=hidden, activation=activation, dropout=dropout)


def restrict_to_candidates(params: GuideParams, candidates: torch.Tensor | None) -> GuideParams:
    """``params`` with the slot logits ``(N, S, K)`` gathered on ``candidates`` ``(N, C)``: ``(N, S, C)``.

    Returns ``params`` unchanged when ``candidates`` is None (the full mode).
    """
    if candidates is None:
        return params
    logits = params.slot_logits
    index = candidates.unsqueeze(1).expand(-1, logits.shape[1], -1)
    return params._replace(slot_logits=logits.gather(-1, index))


@torch.no_grad()
def shortlist_candidates(scores: torch.Tensor, y: torch.Tensor, num_candidates: int,
                         hard_share: float = HARD_NEGATIVE_SHARE) -> torch.Tensor:
    """The training shortlist of each row: ``(N, C)`` distinct label ids in ``[0, K)``.

    Row ``i`` holds its ``p_i`` true labels first, then ``floor(hard_share * (C - p_i))``
    hard negatives (its highest-scored labels that are not true labels) and then uniform
    random negatives, drawn without replacement from the remaining labels with torch's
    global RNG (which training checkpoints restore), to fill the ``C`` places.

    Args:
        scores: ``(N, K)`` label scores of a cheap scorer (the prior network's shared slot logits).
        y: ``(N, K)`` 0/1 labels of the batch, at most ``C`` per row.
        num_candidates: ``C``, with ``C <= K``.
        hard_share: the share of the ``C - p_i`` negatives that are hard negatives.

    Raises:
        DataError: a row with more than ``C`` labels, or ``C > K``.
    """
    n, k = y.shape
    positive = y > 0.5
    counts = positive.sum(-1)
    if num_candidates > k:
        raise DataError(f"num_candidates={num_candidates} exceeds the {k} labels")
    if n and int(counts.max()) > num_candidates:
        raise DataError(f"a row has {int(counts.max())} labels, more than num_candidates={num_candidates}")
    # true labels first (key +inf), then the others by score: the first p_i + h_i places of a row
    ranked = scores.masked_fill(positive, float("inf")).topk(num_candidates, dim=-1).indices  # (N, C)
    kept = counts + ((num_candidates - counts) * hard_share).floor().long()  # p_i + h_i, (N,)
    place = torch.arange(num_candidates, device=y.device)
    head = place < kept.unsqueeze(-1)  # (N, C): places taken by true labels and hard negatives
    # random negatives: the labels not yet taken, in a uniformly random order
    taken = torch.zeros_like(positive).scatter_(-1, ranked, head)
    keys = torch.rand(n, k, device=y.device).masked_fill_(taken, -1.0)
    random = keys.topk(num_candidates, dim=-1).indices  # (N, C); the first C - kept_i are untaken
    fill = random.gather(-1, (place - kept.unsqueeze(-1)).clamp(min=0))
    return torch.where(head, ranked, fill)


class ConditionalSDLGMModel(PyroModule):
    """``p(L, c | x) p(y | s(L, c))`` with ``x``-conditioned networks for the count and the slots.

    Args:
        spec: ``input_dim`` = features ``D``, ``latent_dim`` = labels ``K``,
            ``max_sparsity`` = ``L0`` (the cap on labels per row); ``binary`` must be True.
        per_slot: one logit vector per slot (else shared by the slots).
        hidden, activation: the prior network's MLP trunk.
        label_noise: ``eps`` of the observation ``Bernoulli(eps + (1 - 2 eps) s)``; keeps the
            likelihood of a label outside the support finite.
        dropout: dropout rate after each hidden layer of the prior network (training only).
        fit_objective: ``"set_bound"`` or ``"elbo"`` (see the module docstring); the
            generative process without labels (``y=None``) is the same for both.
    """

    def __init__(self, spec: ModelSpec, *, per_slot: bool = True, hidden: Sequence[int] = (512, 256),
                 activation: str = "relu", label_noise: float = 1e-3, dropout: float = 0.0,
                 fit_objective: str = "elbo"):
        super().__init__(name="sdlgm_conditional_model")
        if not spec.binary:
            raise ConfigError("the multi-label model needs a binary spec (labels are the support)")
        if not 0.0 < label_noise < 0.5:
            raise ConfigError(f"label_noise must lie in (0, 0.5), got {label_noise!r}")
        if fit_objective not in FIT_OBJECTIVES:
            raise ConfigError(f"fit_objective must be one of {FIT_OBJECTIVES}, got {fit_objective!r}")
        if fit_objective == "set_bound" and per_slot:
            raise ConfigError("fit_objective='set_bound' needs shared slot logits (per_slot=False): the bound "
                              "scores the label set under one slot distribution")
        self.spec = spec
        self.label_noise = float(label_noise)
        self.fit_objective = fit_objective
        self.prior_net = _label_network(spec, spec.input_dim, per_slot, hidden, activation, dropout)

    @property
    def schedule_free(self) -> bool:
        """True for the set bound: its objective takes no temperature and no KL weight, so the
        trainer's early stopping need not wait for the schedules to end."""
        return self.fit_objective == "set_bound"

    def prior_params(self, x: torch.Tensor) -> GuideParams:
        """Logits of ``p(L | x)`` ``(N, num_levels)`` and of the slots ``(N, S, K)``."""
        return GuideParams(*self.prior_net(x))

    @torch.no_grad()
    def candidates(self, x: torch.Tensor, y: torch.Tensor, num_candidates: int) -> torch.Tensor:
        """The training shortlist ``(N, C)`` of a batch (see :func:`shortlist_candidates`), with the
        prior network's shared slot logits ``(N, K)`` as the scorer of the hard negatives."""
        scores = self.prior_params(x).slot_logits[:, 0]
        return shortlist_candidates(scores, y, num_candidates)

    def obs_dist(self, support: torch.Tensor) -> dist.TorchDistribution:
        """``y ~ Bernoulli(eps + (1 - 2 eps) s)``, event ``(K,)`` (``(C,)`` on a shortlist)."""
        eps = self.label_noise
        return dist.Bernoulli(probs=eps + (1.0 - 2.0 * eps) * support).to_event(1)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None, *, candidates: torch.Tensor | None = None,
                num_data: int | None = None, tau_sparsity: float = 1.0, tau_support: float = 1.0,
                kl_weight: float = 1.0) -> torch.Tensor:
        """Run the generative process given features ``x (N, D)``; condition on labels ``y (N, K)`` if given.

        With ``candidates`` ``(N, C)`` (shortlist mode) the slots draw over each row's ``C``
        candidates only and ``obs`` observes ``y`` gathered on them (see the module docstring).

        Returns the soft support ``(N, K)``, or ``(N, C)`` over the candidates (with
        enumeration dims on the left in ``enumerate`` mode). With ``fit_objective="set_bound"``
        and labels, the count and the label set are observed instead (:meth:`observe_set`)
        and ``y`` is returned.
        """
        if self.fit_objective == "set_bound" and y is not None:
            return self.observe_set(x, y, num_data, candidates)
        params = restrict_to_candidates(self.prior_params(x), candidates)
        if y is not None and candidates is not None:
            y = y.gather(-1, candidates)
        with data_plate(x.shape[0], num_data, x.device):
            with poutine.scale(scale=kl_weight):
                sparsity = pyro.sample(SPARSITY_SITE, amortized_sparsity_dist(self.spec, params, tau_sparsity))
                slots = sample_slots(self.spec, lambda index: amortized_slot_logits(params, index),
                                     tau_support, sparsity)
            support = relaxed_code(self.spec, sparsity, slots, None)
            if isinstance(support, SparseCode):  # every label is observed: the support over all K
                support = support.to_dense()
            pyro.sample(OBS_SITE, self.obs_dist(support), obs=y)
        return support


    def observe_set(self, x: torch.Tensor, y: torch.Tensor, num_data: int | None = None,
                    candidates: torch.Tensor | None = None) -> torch.Tensor:
        """The set bound's sites: ``sparsity`` observed at the level of ``|y_i|`` (categorical
        over the levels) and ``obs`` observed at ``y_i`` (:class:`DistinctDraws` of the shared
        slot logits ``(N, K)``; with ``candidates`` ``(N, C)``, of the logits and labels gathered
        on them: the slot distribution truncated to each row's shortlist, whose hard negatives
        make the bound a sampled-softmax-style approximation).

        Raises:
            DataError: a row whose count is not a level (more than ``L0`` labels, or none
                without ``include_zero``).
        """
        params = restrict_to_candidates(self.prior_params(x), candidates)
        counts = y.sum(-1).round().long()
        if candidates is not None:
            y = y.gather(-1, candidates)
        spec = self.spec
        low, high = int(counts.min()), int(counts.max())
        if low < spec.min_level or high > spec.max_sparsity:
            bad = low if low < spec.min_level else high
            raise DataError(f"a row has {bad} labels, outside the counts {spec.min_level}..{spec.max_sparsity} "
                            "the model can hold (raise max_labels, or set include_zero for rows without labels)")
        with data_plate(x.shape[0], num_data, x.device):
            pyro.sample(SPARSITY_SITE, dist.Categorical(logits=params.sparsity_logits), obs=counts - spec.min_level)
            pyro.sample(OBS_SITE, DistinctDraws(params.slot_logits[:, 0]), obs=y)
        return y


class _MultiLabelGuide(AmortizedGuide):
    """A guide called as ``guide(x, y, ...)``; subclasses implement ``amortize(x, y)``.

    With ``candidates`` ``(N, C)`` (shortlist mode) the slot logits are gathered on them and
    the slot sites draw over the ``C`` candidates, as in the model; the returned parameters
    then hold slot logits ``(N, S, C)``.
    """

    def forward(self, x, y=None, *, candidates=None, num_data=None, tau_sparsity=1.0, tau_support=1.0,
                kl_weight=1.0) -> GuideParams:
        params = restrict_to_candidates(self.amortize(x, y), candidates)
        self.place_sites(params, num_data, tau_sparsity, tau_support, kl_weight)
        return params


class LabelAwareGuide(_MultiLabelGuide):
    """``q(L, c | x, y)``: an MLP of the concatenated features and labels."""

    def __init__(self, spec: ModelSpec, *, per_slot: bool = True, hidden: Sequence[int] = (512, 256),
                 activation: str = "relu"):
        super().__init__(spec)
        self.encoder = _label_network(spec, spec.input_dim + spec.latent_dim, per_slot, hidden, activation)

    def amortize(self, x: torch.Tensor, y: torch.Tensor) -> GuideParams:
        return GuideParams(*self.encoder(torch.cat([x, y], dim=-1)))


class PriorAsGuide(_MultiLabelGuide):
    """The model's ``x``-only networks used as the guide (ablation: no label-aware posterior)."""

    def __init__(self, model: ConditionalSDLGMModel):
        super().__init__(model.spec)
        self.prior_net = model.prior_net  # shared parameters

    def amortize(self, x: torch.Tensor, y: torch.Tensor | None = None) -> GuideParams:
        return GuideParams(*self.prior_net(x))


class ObservedSupportGuide(PriorAsGuide):
    """The guide of ``fit_objective="set_bound"``: given labels it places no site (the model
    observes the count and the label set), so ``Trace_ELBO`` is the exact negative bound.

    Without labels it places the ``x``-only networks' sites, as :class:`PriorAsGuide`; its
    ``place_sites`` and ``hard_code`` serve prediction and the posterior.
    """

    def forward(self, x, y=None, *, candidates=None, num_data=None, tau_sparsity=1.0, tau_support=1.0,
                kl_weight=1.0) -> GuideParams | None:
        if y is not None:
            return None
        return super().forward(x, None, candidates=candidates, num_data=num_data, tau_sparsity=tau_sparsity,
                               tau_support=tau_support, kl_weight=kl_weight)


def build_conditional(spec: ModelSpec, guide: str, per_slot: bool, hidden: Sequence[int], activation: str,
                      label_noise: float, dropout: float = 0.0, fit_objective: str = "elbo"):
    """The conditional model and its guide: with ``fit_objective="elbo"`` the ``guide``
    (``"label_aware"`` or ``"prior_as_guide"``); with ``"set_bound"`` an
    :class:`ObservedSupportGuide` (``guide`` is not used)."""
    if guide not in CONDITIONAL_GUIDES:
        raise ConfigError(f"unknown multi-label guide {guide!r}; known: {', '.join(CONDITIONAL_GUIDES)}")
    with pyro.settings.context(module_local_params=True):
        model = ConditionalSDLGMModel(spec, per_slot=per_slot, hidden=hidden, activation=activation,
                                      label_noise=label_noise, dropout=dropout, fit_objective=fit_objective)
        if fit_objective == "set_bound":
            return model, ObservedSupportGuide(model)
        if guide == "prior_as_guide":
            return model, PriorAsGuide(model)
        return model, LabelAwareGuide(spec, per_slot=per_slot, hidden=hidden, activation=activation)
