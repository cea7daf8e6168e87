"""Baselines of the unsupervised suite, with the same encoder/decoder sizes and ``K`` as SDLGM.

- :class:`DenseVAE`: Gaussian ``z in R^K``, ``N(0, I)`` prior; the no-sparsity reference.
- :class:`SpikeSlabVAE`: Variational Sparse Coding (Tonolini et al. 2019): each dimension is
  a spike at 0 or a Gaussian slab, prior slab probability ``alpha``; closed-form KL; the
  gates are relaxed Bernoulli samples during training; hard codes keep ``mu_k`` where the
  slab probability ``gamma_k > 0.5``.
- :class:`TopKAutoencoder`: top-k sparse autoencoder (Gao et al. 2024): the ``k`` largest
  pre-activations, then ReLU; no prior, no ELBO. (Gao et al. use a linear encoder and
  decoder and an auxiliary loss against dead latents; here the MLPs match SDLGM's.)
- ``fixed_sparsity`` registrations: SDLGM with ``L_i = L0`` always (the ablation), built from
  the library's registries: a prior and a guide whose count logits put all mass on ``L0``.

All are plain ``torch`` modules trained by :func:`train_autoencoder` (Adam, the SDLGM
trainer's batch size, learning rate, temperature annealing and KL warm-up, early stopping on
the validation loss after the schedules end), because they have no latent discrete
structure that needs Pyro.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn
from torch.nn import functional as F

from pyro_sdlgm.model.guides import GuideParams, MagnitudeSlotsGuide, MLPGuide, register_guide
from pyro_sdlgm.model.networks import Decoder, mlp, output_width
from pyro_sdlgm.model.priors import SparsityPrior, register_sparsity_prior
from pyro_sdlgm.model.support import MASKED_LOGIT


# ----------------------------------------------------------------------------- SDLGM with L_i = L0


def _all_mass_on_max(num_levels: int, device=None) -> torch.Tensor:
    logits = torch.full((num_levels,), MASKED_LOGIT, device=device)
    logits[-1] = 0.0
    return logits


@register_sparsity_prior("fixed_at_max")
class FixedAtMaxSparsity(SparsityPrior):
    """All prior mass on ``L = L0``."""

    def logits(self):
        return _all_mass_on_max(len(self.levels), self.levels.device)


class FixedSparsityGuide(MLPGuide):
    """The per-slot MLP guide with ``q(L = L0 | x) = 1``: the KL of the count is 0 and every code uses L0 slots."""

    def amortize(self, x):
        params = super().amortize(x)
        fixed = _all_mass_on_max(params.sparsity_logits.shape[-1], x.device).expand_as(params.sparsity_logits)
        return GuideParams(fixed, params.slot_logits, params.value_loc, params.value_scale)


@register_guide("mlp_per_slot_fixed_sparsity")
def mlp_per_slot_fixed_sparsity(spec, hidden=(512, 256), activation="relu"):
    return FixedSparsityGuide(spec, per_slot=True, hidden=hidden, activation=activation)


class FixedSparsityMagnitudeGuide(MagnitudeSlotsGuide):
    """The library's default guide (:class:`~pyro_sdlgm.model.guides.MagnitudeSlotsGuide`) with ``q(L = L0 | x) = 1``."""

    def amortize(self, x):
        params = super().amortize(x)
        fixed = _all_mass_on_max(params.sparsity_logits.shape[-1], x.device).expand_as(params.sparsity_logits)
        return params._replace(sparsity_logits=fixed)


@register_guide("mlp_magnitude_slots_fixed_sparsity")
def mlp_magnitude_slots_fixed_sparsity(spec, hidden=(512, 256), activation="relu"):
    return FixedSparsityMagnitudeGuide(spec, hidden=hidden, activation=activation)


# ----------------------------------------------------------------------------- torch baselines


def bernoulli_nll(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``-log p(x | logits)`` per row, summed over features ``(N,)``."""
    return F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(-1)


class DenseVAE(nn.Module):
    """Gaussian VAE with ``K`` latent dimensions; codes are the posterior means (all non-zero)."""

    has_elbo = True

    def __init__(self, input_dim, latent_dim, encoder_hidden=(512, 256), decoder_hidden=(256, 512)):
        super().__init__()
        self.trunk = mlp(input_dim, encoder_hidden)
        self.head = nn.Linear(output_width(encoder_hidden, input_dim), 2 * latent_dim)
        self.decoder = Decoder(latent_dim, input_dim, decoder_hidden)

    def posterior(self, x):
        loc, raw = self.head(self.trunk(x)).chunk(2, -1)
        return loc, F.softplus(raw) + 1e-4

    def loss(self, x, tau: float, kl_weight: float) -> torch.Tensor:
        loc, scale = self.posterior(x)
        z = loc + scale * torch.randn_like(loc)
        kl = 0.5 * (loc**2 + scale**2 - 1.0 - 2.0 * scale.log()).sum(-1)
        return bernoulli_nll(self.decoder(z), x) + kl_weight * kl

    @torch.no_grad()
    def encode(self, x):
        return self.posterior(x)[0]


class SpikeSlabVAE(nn.Module):
    """Variational Sparse Coding (Tonolini et al. 2019) with prior slab probability ``alpha``."""

    has_elbo = True

    def __init__(self, input_dim, latent_dim, alpha: float, encoder_hidden=(512, 256), decoder_hidden=(256, 512)):
        super().__init__()
        if not 0 < alpha < 1:
            raise ValueError(f"alpha must lie in (0, 1), got {alpha}")
        self.alpha = alpha
        self.trunk = mlp(input_dim, encoder_hidden)
        self.head = nn.Linear(output_width(encoder_hidden, input_dim), 3 * latent_dim)
        self.decoder = Decoder(latent_dim, input_dim, decoder_hidden)

    def posterior(self, x):
        loc, raw, gate_logit = self.head(self.trunk(x)).chunk(3, -1)
        return loc, F.softplus(raw) + 1e-4, gate_logit

    def kl(self, loc, scale, gate_logit):
        gamma = torch.sigmoid(gate_logit)
        log_gamma, log_not = F.logsigmoid(gate_logit), F.logsigmoid(-gate_logit)
        gauss = 0.5 * (loc**2 + scale**2 - 1.0 - 2.0 * scale.log())
        return (gamma * (log_gamma - math.log(self.alpha) + gauss)
                + (1 - gamma) * (log_not - math.log(1 - self.alpha))).sum(-1)

    def loss(self, x, tau: float, kl_weight: float) -> torch.Tensor:
        loc, scale, gate_logit = self.posterior(x)
        u = torch.rand_like(loc).clamp(1e-6, 1 - 1e-6)
        gate = torch.sigmoid((gate_logit + u.log() - (-u).log1p()) / tau)  # relaxed Bernoulli
        z = gate * (loc + scale * torch.randn_like(loc))
        return bernoulli_nll(self.decoder(z), x) + kl_weight * self.kl(loc, scale, gate_logit)

    @torch.no_grad()
    def encode(self, x):
        loc, _, gate_logit = self.posterior(x)
        return torch.where(gate_logit > 0, loc, torch.zeros_like(loc))


class TopKAutoencoder(nn.Module):
    """Top-k sparse autoencoder: ``z = ReLU(TopK_k(encoder(x)))``, Bernoulli reconstruction loss."""

    has_elbo = False

    def __init__(self, input_dim, latent_dim, k: int, encoder_hidden=(512, 256), decoder_hidden=(256, 512)):
        super().__init__()
        if not 1 <= k <= latent_dim:
            raise ValueError(f"k must lie in [1, {latent_dim}], got {k}")
        self.k = k
        self.encoder = mlp(input_dim, encoder_hidden, latent_dim)
        self.decoder = Decoder(latent_dim, input_dim, decoder_hidden)

    def codes(self, x):
        pre = self.encoder(x)
        values, index = pre.topk(self.k, dim=-1)
        return torch.zeros_like(pre).scatter(-1, index, F.relu(values))

    def loss(self, x, tau: float, kl_weight: float) -> torch.Tensor:
        return bernoulli_nll(self.decoder(self.codes(x)), x)

    @torch.no_grad()
    def encode(self, x):
        return self.codes(x)


def train_autoencoder(module: nn.Module, x_train: torch.Tensor, x_val: torch.Tensor, *, epochs: int, batch_size: int,
                      learning_rate: float, seed: int, tau_start: float = 1.0, tau_end: float = 0.5,
                      anneal_fraction: float = 0.5, kl_warmup_fraction: float = 0.3, patience: int = 10) -> list[dict]:
    """Adam on ``module.loss`` with SDLGM's schedules and early stopping; returns the history.

    The temperature decays exponentially from ``tau_start`` to ``tau_end`` over the first
    ``anneal_fraction`` of the steps; the KL weight rises linearly over the first
    ``kl_warmup_fraction``. The validation loss is taken at ``tau_end`` and KL weight 1;
    the parameters of the best validation epoch after the schedules end are kept.
    """
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(module.parameters(), lr=learning_rate)
    steps_per_epoch = math.ceil(len(x_train) / batch_size)
    total = epochs * steps_per_epoch
    anneal_end, warmup_end = anneal_fraction * total, kl_warmup_fraction * total
    schedule_end = max(anneal_end, warmup_end)
    step, best, best_state, stale, history = 0, math.inf, None, 0, []
    for epoch in range(epochs):
        module.train()
        epoch_loss = 0.0
        for rows in torch.randperm(len(x_train), generator=generator).split(batch_size):
            fraction = min(step / anneal_end, 1.0) if anneal_end > 0 else 1.0
            tau = tau_start * (tau_end / tau_start) ** fraction
            kl_weight = min(step / warmup_end, 1.0) if warmup_end > 0 else 1.0
            loss = module.loss(x_train[rows], tau, kl_weight).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            epoch_loss += loss.item() * len(rows)
            step += 1
        module.eval()
        with torch.no_grad(), torch.random.fork_rng():
            torch.manual_seed(seed + 1)
            val = float(torch.cat([module.loss(b, tau_end, 1.0) for b in x_val.split(1024)]).mean())
        history.append({"epoch": epoch, "train_loss": epoch_loss / len(x_train), "val_loss": val})
        if step >= schedule_end:
            if val < best:
                best, best_state, stale = val, copy.deepcopy(module.state_dict()), 0
            else:
                stale += 1
                if stale >= patience:
                    break
    if best_state is not None:
        module.load_state_dict(best_state)
    module.eval()
    return history


@torch.no_grad()
def test_elbo(module: nn.Module, x: torch.Tensor, seed: int = 0) -> float:
    """Mean ELBO per example (one sample, ``tau -> 0`` gates for the spike-and-slab VAE)."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return -float(torch.cat([module.loss(b, 1e-3, 1.0) for b in x.split(1024)]).mean())
