"""Classifier score distillation (CSD), Yu et al. (ICLR 2024), "Text-to-3D with Classifier Score Distillation".

CSD keeps only the classifier part of the guided score; in its general ("triple guidance") form

    g_CSD = w(t) · ( a·ε̂(x_t; y) + b·ε̂(x_t; y_neg) + c·ε̂(x_t; ∅) + d·ε ),   a + b + c + d = 0 in practice

with a = ``cond_scale``, b = ``uncond_scale``, c = ``null_scale``, d = ``noise_scale``, each a number or a schedule
(threestudio's 4-list ``[start_step, start_value, end_value, end_step]``). The default is pure CSD (1, 0, −1, 0):
g = w(t)·(ε̂_c − ε̂_∅), the classifier score alone, with no ε term. ∅ is the empty prompt "" (encoded by the prior as
an empty negative prompt); y_neg is ``negative_prompt`` when set, else the recipe's ``negative_prompt`` (the batch's
uncond embedding, which is ∅ itself when the recipe has none). ``guidance_scale`` is not used: the coefficients are
the whole recipe (scale the term with ``loss.lambda_csd``). A branch whose coefficient is 0 at this step is not
evaluated. With Perp-Neg, ε̂_c is corrected relative to ∅ (see :mod:`dreamkit.guidance.base`).

Reference: CVMI-Lab/Classifier-Score-Distillation, ``threestudio/models/guidance/stable_diffusion_triple_guidance.py``
(``compute_grad_sds``), w(t) = 1 − ᾱ_t (SD) or uniform (DeepFloyd IF). Annealed negative prompt, ``configs/csd-if.yaml``
(DeepFloyd IF, 64², 10 000 steps, t max 0.98 → 0.5 at step 5000), as a dreamkit recipe::

    guidance:
      name: csd
      weighting: uniform
      cond_scale: 1.0
      uncond_scale: [0, -0.0, -1.0, 5000]   # y_neg = "oversaturated color, ugly, tiling, low quality, noisy"
      null_scale: [0, -1.0, 0.0, 5000]
      negative_prompt: "oversaturated color, ugly, tiling, low quality, noisy"

which moves from ε̂_y − ε̂_∅ to ε̂_y − ε̂_neg over 5000 steps. The SD refine stage (``csd-sd-refine.yaml``) anneals
uncond −1 → −0.5 and null 0 → −0.5 over 10 000 steps. CFG convention: CSD's coefficients are on the raw predictions,
so no conversion is needed (its s + 1 convention concerns only CFG-style scales).

Exact properties (tests/test_guidance_family.py): with a prior that ignores the prompt (ε̂_c ≡ ε̂_∅), g ≡ 0 for every ε;
the gradient with all four coefficients non-zero against the formula worked by hand.
"""
from dataclasses import dataclass
from typing import Any, Optional

import torch

from ..batch import Batch
from ..config import sched
from ..schedule import value_at
from .base import ScoreDistillation, ScoreDistillationConfig

__all__ = ["CSDConfig", "CSDGuidance"]


@dataclass
class CSDConfig(ScoreDistillationConfig):
    name: str = "csd"
    #: a: weight of ε̂(x_t; y)
    cond_scale: Any = sched(1.0)
    #: b: weight of ε̂(x_t; y_neg)
    uncond_scale: Any = sched(0.0)
    #: c: weight of ε̂(x_t; ∅), ∅ = the empty prompt
    null_scale: Any = sched(-1.0)
    #: d: weight of the noise ε
    noise_scale: Any = sched(0.0)
    #: y_neg; null = the recipe's negative_prompt (the batch's uncond)
    negative_prompt: Optional[str] = None


class CSDGuidance(ScoreDistillation):
    """CSD loss (``loss_csd``)."""

    loss_name = "csd"
    loss_names = ("csd",)

    def coefficients(self, step: int) -> tuple[float, float, float, float]:
        cfg = self.cfg
        return tuple(value_at(getattr(cfg, k), step, f"guidance.{k}")  # type: ignore[return-value]
                     for k in ("cond_scale", "uncond_scale", "null_scale", "noise_scale"))

    def residual(self, x: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, batch: Batch,
                 step: int, generator: Optional[torch.Generator]):
        a, b, c, d = self.coefficients(step)
        size = x.shape[0]
        negatives = self.perp_neg_conds(batch, size)
        need_null = c != 0 or bool(negatives)
        conds = [batch.text.cond]
        if b != 0:
            conds.append(self.negative_cond(self.cfg.negative_prompt, batch, size))
        if need_null:
            conds.append(self.null_cond(batch, size))
        preds = self.predictions(x_t, t, conds + negatives, batch)
        eps_c = preds[0]
        eps_neg = preds[1] if b != 0 else None
        eps_null = preds[len(conds) - 1] if need_null else None
        eps_c = self.perp_neg(eps_c, eps_null, preds[len(conds):], step)
        r = a * eps_c.to(x.dtype)
        if eps_neg is not None:
            r = r + b * eps_neg.to(x.dtype)
        if c != 0:
            r = r + c * eps_null.to(x.dtype)
        if d != 0:
            r = r + d * noise
        return r, {}
