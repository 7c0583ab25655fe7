"""Balanced score distillation (BSD), PlacidDreamer (Huang et al., ACM MM 2024).

BSD takes, per sample, the minimum-norm point of the segment between a classifier term and a denoising term (a
Pareto-optimal combination of the two objectives, as MGDA):

    δ_C = λ·(ε̂_c − ε̂_u),   δ_D = ε̂_u
    α* = clamp( ⟨δ_D − δ_C, δ_D⟩ / ‖δ_D − δ_C‖², 0, 1 )      (per sample, over the flattened C·H·W)
    g_BSD = w(t) · ( α*·δ_C + (1 − α*)·δ_D ),   w(t) = α_t = sqrt(ᾱ_t)

with λ = ``classifier_scale``, ε̂_u the recipe's uncond (its negative prompt, LucidDreamer's convention; Perp-Neg
corrects ε̂_c relative to it), x_t = α_t·x + σ_t·ε as the base draws it, and no ε term. ``weighting: bsd`` (the
default here) is w(t) = sqrt(ᾱ_t); the base's sds | uniform | fantasia3d stay valid. ``guidance_scale`` is not used
(the reference's 7.5-guided prediction only feeds its visualisations). α* is logged as ``bsd_alpha`` (batch mean).

Reference: HansenHuang0823/PlacidDreamer ``guidance/sd_utils.py::train_step_BSD``. Other defaults are LucidDreamer's
(t ∈ [0.02, 0.98 → 0.5], 4 views, grad scale 0.1). Clean-version notes:

* λ is hard-coded to 15 there (the CLI's ``--lambda_`` 18 is passed as ``guidance_ratio`` and not used): here it is
  the ``classifier_scale`` config key, default 15;
* when δ_C = δ_D (e.g. ε̂_c − ε̂_u = ε̂_u/λ) the reference divides 0 by 0 and its ``nan_to_num`` zeroes the whole
  gradient; here α* = 0 whenever ‖δ_D − δ_C‖² ≤ 1e-12 (every point of the degenerate segment is the same), so
  g = w(t)·δ_D;
* the ``train_step_BSD_auto`` variant (δ_D = 1.25·(ε̂_u − ε), w = ‖ε̂_u − ε‖·σ_t/50) is not built.

Exact properties (tests/test_guidance_family.py): α* equals the argmin of ‖α·δ_C + (1 − α)·δ_D‖ over a dense grid of
α ∈ [0, 1] and lies in [0, 1]; δ_C = δ_D gives g = sqrt(ᾱ_t)·δ_D with no NaN; the gradient against the formula worked
by hand.
"""
from dataclasses import dataclass
from typing import Any, Optional

import torch

from ..batch import Batch
from ..config import sched
from ..schedule import value_at
from .base import ScoreDistillation, ScoreDistillationConfig

__all__ = ["BSDConfig", "BSDGuidance", "balance"]

#: ‖δ_D − δ_C‖² at or below this counts as a degenerate segment (α* = 0)
DEGENERATE = 1e-12


def balance(delta_c: torch.Tensor, delta_d: torch.Tensor) -> torch.Tensor:
    """α* [B] = clamp(⟨δ_D − δ_C, δ_D⟩ / ‖δ_D − δ_C‖², 0, 1) per sample; 0 for a degenerate segment (δ_C = δ_D)."""
    diff = (delta_d - delta_c).flatten(1)
    num = (diff * delta_d.flatten(1)).sum(1)
    den = (diff * diff).sum(1)
    ok = den > DEGENERATE
    alpha = num / torch.where(ok, den, torch.ones_like(den))
    return torch.where(ok, alpha, torch.zeros_like(alpha)).clamp(0.0, 1.0)


@dataclass
class BSDConfig(ScoreDistillationConfig):
    name: str = "bsd"
    #: w(t): bsd (sqrt(ᾱ_t), PlacidDreamer) | sds | uniform | fantasia3d
    weighting: str = "bsd"
    #: λ of δ_C = λ·(ε̂_c − ε̂_u) (PlacidDreamer hard-codes 15)
    classifier_scale: Any = sched(15.0)
    max_step_percent: Any = sched([0, 0.98, 0.5, 1500])


class BSDGuidance(ScoreDistillation):
    """BSD loss (``loss_bsd``); logs ``bsd_alpha`` (mean α*)."""

    loss_name = "bsd"
    loss_names = ("bsd",)
    extra_weightings = {"bsd": lambda abar: abar.sqrt()}

    def residual(self, x: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, batch: Batch,
                 step: int, generator: Optional[torch.Generator]):
        lam = value_at(self.cfg.classifier_scale, step, "guidance.classifier_scale")
        eps_c, eps_u, *eps_pn = self.predictions(
            x_t, t, [batch.text.cond, batch.text.uncond, *self.perp_neg_conds(batch, x.shape[0])], batch)
        eps_c = self.perp_neg(eps_c, eps_u, eps_pn, step)
        delta_c = (lam * (eps_c - eps_u)).to(x.dtype)
        delta_d = eps_u.to(x.dtype)
        alpha = balance(delta_c, delta_d)
        a = alpha.view(-1, *([1] * (x.dim() - 1)))
        return a * delta_c + (1 - a) * delta_d, {"alpha": alpha.mean()}
