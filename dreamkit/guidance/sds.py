"""Score distillation sampling (SDS), DreamFusion (Poole et al. 2022).

    ∇_θ L_SDS = E_{t,ε}[ w(t) · (ε̂_s(x_t; y, t) − ε) · ∂x/∂θ ]

with ε̂_s the classifier-free-guided prediction ε̂_u + s·(ε̂_c − ε̂_u). Timesteps, w(t), CFG, clipping and the
reparametrised loss are :class:`~dreamkit.guidance.base.ScoreDistillation`'s; SDS supplies r = ε̂_s − ε.
"""
from dataclasses import dataclass
from typing import Optional

import torch

from ..batch import Batch
from .base import T_ANNEALS, WEIGHTINGS, ScoreDistillation, ScoreDistillationConfig

__all__ = ["SDSConfig", "SDSGuidance", "T_ANNEALS", "WEIGHTINGS"]


@dataclass
class SDSConfig(ScoreDistillationConfig):
    name: str = "sds"


class SDSGuidance(ScoreDistillation):
    """SDS loss (``loss_sds``)."""

    loss_name = "sds"
    loss_names = ("sds",)

    def residual(self, x: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, batch: Batch,
                 step: int, generator: Optional[torch.Generator]):
        eps = self.guided_prediction(x_t, t, batch, step)
        return eps.to(x.dtype) - noise, {}
