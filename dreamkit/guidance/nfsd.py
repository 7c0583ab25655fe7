"""Noise-free score distillation (NFSD), Katzir et al. (ICLR 2024), "Noise-free Score Distillation".

NFSD splits the guided score into a domain term δ_D and a condition term δ_C = ε̂_c − ε̂_∅ and drops the noise:

    g_NFSD = w(t) · ( δ_D + s·(ε̂(x_t; y) − ε̂(x_t; ∅)) ),   δ_D = ε̂(x_t; ∅)                  if t < τ
                                                         δ_D = ε̂(x_t; ∅) − ε̂(x_t; y_neg)   otherwise

with τ = round(``switch_fraction``·T) (0.2 → 200 of T = 1000 steps), s = ``guidance_scale`` (the standard CFG
convention ε̂_∅ + s·(ε̂_c − ε̂_∅), as SDS, whose bracket is (ε̂_∅ − ε) + s·δ_C: NFSD puts δ_D for ε̂_∅ − ε), ∅ the empty
prompt "" and y_neg = ``negative_prompt`` (the reference's "unrealistic, blurry, low quality, out of focus, ugly, low
contrast, dull, dark, low-resolution, gloomy"; null = the recipe's negative_prompt, the batch's uncond). There is no
ε term at all: given x_t, g does not depend on ε. With Perp-Neg, ε̂_c is corrected relative to ∅.

Reference: the official NFSD code was not available; this follows NFSD as implemented in SDS-Bridge
(davidmcall/SDS-Bridge ``2D_experiments/guidance.py::nfsd_loss``): w = 1 − ᾱ_t, s = 100 there, while the paper uses
the nominal CFG scale 7.5 (the default here). Its hard-coded 200 is ``switch_fraction`` here, and the switch is per
sample (the reference compares a one-element t).

Exact properties (tests/test_guidance_family.py): t = τ − 1 uses ε̂_∅ and t = τ uses ε̂_∅ − ε̂_neg; g is independent of ε
given x_t; the gradient against the formula worked by hand on both sides of the switch.
"""
from dataclasses import dataclass
from typing import Any, Optional

import torch

from ..batch import Batch
from ..config import sched
from ..errors import ConfigError
from ..schedule import value_at
from .base import ScoreDistillation, ScoreDistillationConfig

__all__ = ["NFSDConfig", "NFSDGuidance", "NFSD_NEGATIVE"]

NFSD_NEGATIVE = ("unrealistic, blurry, low quality, out of focus, ugly, low contrast, dull, dark, low-resolution, "
                 "gloomy")


@dataclass
class NFSDConfig(ScoreDistillationConfig):
    name: str = "nfsd"
    #: s of the condition term s·(ε̂_c − ε̂_∅) (the paper's 7.5; SDS-Bridge's NFSD uses 100)
    guidance_scale: Any = sched(7.5)
    #: y_neg of the domain term at t ≥ τ; null = the recipe's negative_prompt (the batch's uncond)
    negative_prompt: Optional[str] = NFSD_NEGATIVE
    #: τ as a fraction of the prior's training timesteps: t < τ uses δ_D = ε̂_∅ (0.2 → 200 of 1000)
    switch_fraction: float = 0.2


class NFSDGuidance(ScoreDistillation):
    """NFSD loss (``loss_nfsd``); logs ``nfsd_low`` (the fraction of images below the switch, δ_D = ε̂_∅)."""

    loss_name = "nfsd"
    loss_names = ("nfsd",)

    def __init__(self, cfg: Any, prior, max_steps: int):
        super().__init__(cfg, prior, max_steps)
        if not 0.0 <= float(cfg.switch_fraction) <= 1.0:
            raise ConfigError(f"guidance.switch_fraction={cfg.switch_fraction} must be in [0, 1] (NFSD: 0.2)")

    @property
    def switch_timestep(self) -> int:
        """τ: timesteps below it use δ_D = ε̂_∅."""
        return int(round(float(self.cfg.switch_fraction) * self.prior.num_train_timesteps))

    def residual(self, x: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, batch: Batch,
                 step: int, generator: Optional[torch.Generator]):
        size = x.shape[0]
        scale = value_at(self.cfg.guidance_scale, step, "guidance.guidance_scale")
        neg = self.negative_cond(self.cfg.negative_prompt, batch, size)
        null = self.null_cond(batch, size)
        eps_c, eps_null, eps_neg, *eps_pn = self.predictions(
            x_t, t, [batch.text.cond, null, neg, *self.perp_neg_conds(batch, size)], batch)
        eps_c = self.perp_neg(eps_c, eps_null, eps_pn, step)
        low = (t < self.switch_timestep).view(-1, *([1] * (x.dim() - 1)))
        delta_d = torch.where(low, eps_null, eps_null - eps_neg)
        r = delta_d + scale * (eps_c - eps_null)
        return r.to(x.dtype), {"low": low.float().mean()}
