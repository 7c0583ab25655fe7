"""Asynchronous score distillation (ASD), ScaleDreamer (Ma et al., ECCV 2024).

ASD replaces VSD's trainable φ with the frozen prior itself at a later timestep, with the same noise:

    g_ASD = w(t) · ( ε̂_s(x_t; y, t) − ε̂(x_{t+Δt}; y, t+Δt) ),    x_{t+Δt} = α_{t+Δt}·x + σ_{t+Δt}·ε

    Δt = ⌊ u · clamp(η·(t − t_min), 0, T − 1 − t) ⌋,  u ~ U(0, 1) if ``plus_random`` else 1;  t + Δt clamped to [1, T−1]

η = ``plus_ratio`` (0.1), t_min the current lower end of the timestep range. The second branch is conditional only
(no CFG). Timesteps, w(t), CFG and the loss are :class:`~dreamkit.guidance.base.ScoreDistillation`'s.

Clean version of the reference (threestudio-extension ScaleDreamer, ``SDTimestepShiftedScoreDistillationGuidance``):
``get_t_plus`` is defined twice there and the second definition (the one that runs) is the one implemented here; for a
multi-view prior, which was trained with one noise level per group of views, u (and so Δt) is drawn per group.

Exact properties (tests/test_asd.py): with ``plus_ratio=0``, Δt = 0 and g = w(t)·(s − 1)·(ε̂_c − ε̂_u); Δt stays in
[0, T − 1 − t] for every t; at a data point of the oracle prior with s = 1, g = 0.
"""
from dataclasses import dataclass
from typing import Optional

import torch

from ..batch import Batch, Layout
from .base import ScoreDistillation, ScoreDistillationConfig

__all__ = ["ASDConfig", "ASDGuidance"]


@dataclass
class ASDConfig(ScoreDistillationConfig):
    name: str = "asd"
    #: η: Δt = u·η·(t − t_min) (ScaleDreamer's default 0.1)
    plus_ratio: float = 0.1
    #: draw u ~ U(0, 1) (else u = 1: Δt = ⌊η·(t − t_min)⌋)
    plus_random: bool = True


class ASDGuidance(ScoreDistillation):
    """ASD loss (``loss_asd``); logs ``asd_dt`` (mean Δt)."""

    loss_name = "asd"
    loss_names = ("asd",)

    def __init__(self, cfg, prior, max_steps: int):
        super().__init__(cfg, prior, max_steps)
        if not float(cfg.plus_ratio) >= 0:
            from ..errors import ConfigError

            raise ConfigError(f"guidance.plus_ratio={cfg.plus_ratio} must be ≥ 0 (ScaleDreamer uses 0.1)")

    def delta_t(self, t: torch.Tensor, t_min: int, generator: Optional[torch.Generator] = None,
                layout: Optional[Layout] = None) -> torch.Tensor:
        """Δt [B] (integer) for timesteps t [B] given the current t_min; u drawn per group of ``layout``."""
        n = self.prior.num_train_timesteps
        dt = float(self.cfg.plus_ratio) * (t - t_min).to(torch.float64)
        dt = torch.minimum(dt.clamp_min(0.0), (n - 1 - t).to(torch.float64))
        if self.cfg.plus_random:
            layout = layout or Layout()
            u = torch.rand(layout.groups(t.shape[0]), generator=generator, device=t.device, dtype=torch.float32)
            dt = dt * layout.per_image(u.to(torch.float64))
        return dt.floor().to(torch.long)

    def residual(self, x: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, batch: Batch,
                 step: int, generator: Optional[torch.Generator]):
        n = self.prior.num_train_timesteps
        t_min, _ = self.timestep_range(step)
        t_plus = (t + self.delta_t(t, t_min, generator, batch.layout)).clamp(1, n - 1)
        abar = self.prior.alphas_cumprod.to(x.device)[t_plus].view(-1, *([1] * (x.dim() - 1)))
        x_plus = abar.sqrt() * x + (1 - abar).sqrt() * noise
        eps = self.guided_prediction(x_t, t, batch, step)
        with self.timer("prior"):
            eps_plus = self.prior.predict(x_plus, t_plus, batch.text.cond, batch.cameras)
        return (eps - eps_plus).to(x.dtype), {"dt": (t_plus - t).float().mean()}
