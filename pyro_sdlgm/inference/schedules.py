"""Schedules computed by the trainer and passed to the model and guide as arguments."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class ExponentialAnnealing:
    """``value(t) = start * (end / start) ** min(t / steps, 1)``: geometric decay, then constant."""

    start: float
    end: float
    steps: int

    def __call__(self, step: int) -> float:
        if self.steps <= 0:
            return self.end
        progress = min(step / self.steps, 1.0)
        return self.start * math.exp(progress * math.log(self.end / self.start))


@dataclass(frozen=True)
class LinearWarmup:
    """``value(t) = min(1, (t + 1) / steps)``; 1 throughout when ``steps`` is 0."""

    steps: int

    def __call__(self, step: int) -> float:
        if self.steps <= 0:
            return 1.0
        return min(1.0, (step + 1) / self.steps)


@dataclass(frozen=True)
class TrainingSchedule:
    """Temperatures of both relaxed sites and the KL weight, as functions of the step."""

    tau_sparsity: ExponentialAnnealing
    tau_support: ExponentialAnnealing
    kl_weight: LinearWarmup

    @classmethod
    def from_config(cls, config, total_steps: int) -> TrainingSchedule:
        anneal = int(round(config.anneal_fraction * total_steps))
        return cls(
            ExponentialAnnealing(config.tau_sparsity_start, config.tau_sparsity_end, anneal),
            ExponentialAnnealing(config.tau_support_start, config.tau_support_end, anneal),
            LinearWarmup(int(round(config.kl_warmup_fraction * total_steps))),
        )

    def __call__(self, step: int) -> dict[str, float]:
        """Keyword arguments for the model and guide at ``step``."""
        return {
            "tau_sparsity": self.tau_sparsity(step),
            "tau_support": self.tau_support(step),
            "kl_weight": self.kl_weight(step),
        }

    def end_step(self) -> int:
        """The first step at which every schedule has reached its final value."""
        return max(self.tau_sparsity.steps, self.tau_support.steps, self.kl_weight.steps - 1, 0)

    def final(self) -> dict[str, float]:
        """The target objective: final temperatures and KL weight 1."""
        return {"tau_sparsity": self.tau_sparsity.end, "tau_support": self.tau_support.end, "kl_weight": 1.0}


def final_schedule(config=None) -> dict[str, float]:
    """The target objective's arguments for a model trained with ``config`` (a ``TrainConfig``;
    default: the default options): its final temperatures and KL weight 1."""
    if config is None:
        from pyro_sdlgm.config import TrainConfig

        config = TrainConfig()
    return TrainingSchedule.from_config(config, 1).final()
