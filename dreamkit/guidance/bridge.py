"""SDS-Bridge, McAllister et al. (NeurIPS 2024), "Rethinking score distillation as a bridge between image
distributions".

Score distillation seen as a Schrödinger bridge from the current source distribution of renders to the target one,
with the source's score approximated by a text prompt describing SDS's typical artefacts. Two stages, switched at
``stage_two_start_step``:

    stage 1 (step < start):  g = w(t) · λ1 · ( ε̂_u + s·(ε̂(x_t; y_tgt) − ε̂_u) − ε )      SDS toward the target prompt
    stage 2:                 g = w(t) · λ2 · ( ε̂(x_t; y_tgt) − ε̂(x_t; y_src) )

y_tgt = prompt + ", " + ``target_modifier`` ("."), y_src = prompt + ", " + ``source_modifier`` ("oversaturated, smooth,
pixelated, cartoon, foggy, hazy, blurry, bad structure, noisy, malformed"), built per image from its prompt text
(``batch.text.prompts[i]``); a trailing view suffix (", front view", ...) stays last, as the reference's prompt
processor orders them ("a hamburger, ., front view"). An empty modifier leaves the prompt as it is. ε̂_u is the
recipe's uncond (the reference's stage 1 uses the source processor's negative prompt, "" by default), s =
``guidance_scale`` in the standard convention (the reference's 3-D config: 100), λ1 = ``stage_one_weight``,
λ2 = ``stage_two_weight`` (both 1 in the 3-D config; 100 is the guidance class's unused default, and the 2-D
``bridge_stage_two`` uses (1 − ᾱ_t)·30). With Perp-Neg, ε̂(y_tgt) is corrected relative to ε̂_u (stage 1) or
ε̂(y_src) (stage 2).

Reference: davidmcall/SDS-Bridge ``threestudio-sds-bridge/guidance/sds_bridge_guidance.py::compute_grad_sds_bridge``,
stage switch in ``systems/sds_bridge.py``; 3-D config ``configs/sds-bridge.yaml``: 25 000 steps, stage two from step
20 000, t max 0.98 → 0.5 at step 5000, ``weighting_strategy: uniform``. Clean-version note: the reference's stage 1
multiplies by its hard-coded w(t) = 1 − ᾱ_t inside (λ1·w·ε̂_s − λ1·w·ε) and then again by the configured weighting, so
with ``weighting_strategy: sds`` it applies w(t)² (and with its shipped ``uniform``, stage 1 gets 1 − ᾱ_t and stage 2
gets 1). Here w(t) is applied once, by the base's ``weighting``, in both stages. The 2-D tgt modifier of the paper's
image experiments is "detailed high resolution, high quality, sharp".

Exact properties (tests/test_guidance_family.py): with y_src = y_tgt, stage 2 gives g ≡ 0; swapping the source and
target modifiers negates g (antisymmetry); the gradients of both stages against the formula worked by hand.
"""
from dataclasses import dataclass
from typing import Any, Optional

import torch

from ..batch import Batch
from ..cameras import VIEW_SUFFIXES
from ..config import sched
from ..schedule import value_at
from .base import ScoreDistillation, ScoreDistillationConfig

__all__ = ["BridgeConfig", "BridgeGuidance", "SOURCE_MODIFIER", "with_modifier"]

SOURCE_MODIFIER = "oversaturated, smooth, pixelated, cartoon, foggy, hazy, blurry, bad structure, noisy, malformed"


def with_modifier(prompt: str, modifier: str) -> str:
    """``prompt, modifier``, keeping a trailing view suffix last ("a cube, front view" → "a cube, <modifier>, front
    view"); the prompt itself for an empty modifier."""
    if not modifier:
        return prompt
    for suffix in VIEW_SUFFIXES:
        tail = f", {suffix}"
        if prompt.endswith(tail):
            return f"{prompt[:-len(tail)]}, {modifier}{tail}"
    return f"{prompt}, {modifier}"


@dataclass
class BridgeConfig(ScoreDistillationConfig):
    name: str = "bridge"
    #: s of stage 1's CFG toward the target prompt (SDS-Bridge: 100)
    guidance_scale: Any = sched(100.0)
    #: the step from which stage 2 (the bridge ε̂_tgt − ε̂_src) replaces stage 1 (SDS toward y_tgt); SDS-Bridge: 20 000
    stage_two_start_step: int = 20000
    #: λ1, the weight of stage 1
    stage_one_weight: Any = sched(1.0)
    #: λ2, the weight of stage 2
    stage_two_weight: Any = sched(1.0)
    #: y_src = prompt + ", " + this: the source distribution (SDS's artefacts)
    source_modifier: str = SOURCE_MODIFIER
    #: y_tgt = prompt + ", " + this
    target_modifier: str = "."


class BridgeGuidance(ScoreDistillation):
    """SDS-Bridge loss (``loss_bridge``); logs ``bridge_stage`` (1 or 2)."""

    loss_name = "bridge"
    loss_names = ("bridge",)

    def stage(self, step: int) -> int:
        return 2 if step >= int(self.cfg.stage_two_start_step) else 1

    def residual(self, x: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, batch: Batch,
                 step: int, generator: Optional[torch.Generator]):
        size = x.shape[0]
        stage = self.stage(step)
        prompts = self.image_prompts(batch, size, "guidance.name=bridge (its source and target prompts)")
        tgt = self.text_embeddings([with_modifier(p, self.cfg.target_modifier) for p in prompts], False, batch)
        negatives = self.perp_neg_conds(batch, size)
        if stage == 1:
            scale = value_at(self.cfg.guidance_scale, step, "guidance.guidance_scale")
            weight = value_at(self.cfg.stage_one_weight, step, "guidance.stage_one_weight")
            eps_tgt, eps_u, *eps_pn = self.predictions(x_t, t, [tgt, batch.text.uncond, *negatives], batch)
            eps_tgt = self.perp_neg(eps_tgt, eps_u, eps_pn, step)
            r = weight * ((eps_u + scale * (eps_tgt - eps_u)).to(x.dtype) - noise)
        else:
            weight = value_at(self.cfg.stage_two_weight, step, "guidance.stage_two_weight")
            src = self.text_embeddings([with_modifier(p, self.cfg.source_modifier) for p in prompts], False, batch)
            eps_tgt, eps_src, *eps_pn = self.predictions(x_t, t, [tgt, src, *negatives], batch)
            eps_tgt = self.perp_neg(eps_tgt, eps_src, eps_pn, step)
            r = weight * (eps_tgt - eps_src).to(x.dtype)
        return r, {"stage": torch.full((), float(stage), device=x.device)}
