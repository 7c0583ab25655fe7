"""Variational score distillation (VSD), ProlificDreamer (Wang et al. 2023).

    g_VSD = w(t) · ( ε̂_s(x_t; y, t) − ε̂_φ,s_φ(x_t; y, c, t) )

ε̂_s: the frozen prior with classifier-free guidance s (view-dependent text where the recipe asks for it). ε̂_φ: a
trainable copy of the prior (:class:`~dreamkit.guidance.phi.TrainableCopy`: LoRA + a camera input), fed the
conditional text and the camera c; its guidance is over the camera, ε̂_φ(∅) + s_φ·(ε̂_φ(c) − ε̂_φ(∅)) with ∅ a zero
camera (``guidance_scale_lora``, 1 by default: just ε̂_φ(c)). Both predictions share x_t, t and ε, so ε cancels.

φ trains on the same step's renders (detached) with the diffusion loss over the full timestep range:

    L_lora = ‖ ε̂_φ(α_τ·sg(x) + σ_τ·ε'; y, c̃, τ) − ε' ‖²  (mean),   τ ~ U{0 … T−1},  c̃ = c or ∅ with p = camera_dropout

logged and weighted as ``loss_lora`` (``loss.lambda_lora``), with ``vsd_lora_ratio`` = L_lora / the frozen prior's loss
on the same draw (1 at initialisation, below 1 once φ fits the renders better than the prior); it reaches only φ (x is detached) and the VSD gradient
only the 3D parameters. φ's parameters are a separate optimizer group at ``guidance.lr_lora``. One φ step per 3D step
(ProlificDreamer's K = 1). For a v-prediction prior the loss compares ε predictions (the prior's adapter converts v
to ε), which weights timesteps differently from a v-space loss.

Defaults (threestudio's prolificdreamer.yaml): s = 7.5, s_φ = 1, w(t) = 1 − ᾱ_t, camera dropout 0.1, LoRA rank 4.
Not built yet: several particles sharing φ (ProlificDreamer's n_particles), the HiFA image-space term.

Exact properties (tests/test_vsd.py): at initialisation (zero adapters) ε̂_φ = ε̂_pre, so
g = w(t)·(s − 1)·(ε̂_c − ε̂_u), and g = 0 at s = 1; L_lora sends no gradient to the renders.
"""
from dataclasses import dataclass
from typing import Any, Optional

import torch

from ..cameras import Cameras
from ..config import sched
from ..schedule import value_at
from ..types import TextCond
from .base import ScoreDistillation, ScoreDistillationConfig
from .phi import TrainableCopy, camera_features

__all__ = ["VSDConfig", "VSDGuidance"]


@dataclass
class VSDConfig(ScoreDistillationConfig):
    name: str = "vsd"
    guidance_scale: Any = sched(7.5)
    #: s_φ: guidance of φ over the camera (1 = ε̂_φ(c) alone)
    guidance_scale_lora: float = 1.0
    #: LoRA rank of φ's attention projections
    lora_rank: int = 4
    #: learning rate of φ (its own optimizer group; number or schedule)
    lr_lora: Any = sched(1e-4)
    #: probability of training φ without its camera (∅), for the camera guidance
    camera_dropout: float = 0.1


class VSDGuidance(ScoreDistillation):
    """VSD loss (``loss_vsd``) and φ's diffusion loss (``loss_lora``)."""

    loss_name = "vsd"
    loss_names = ("vsd", "lora")

    def __init__(self, cfg: Any, prior, max_steps: int):
        super().__init__(cfg, prior, max_steps)
        from ..errors import ConfigError

        if not 0.0 <= float(cfg.camera_dropout) <= 1.0:
            raise ConfigError(f"guidance.camera_dropout={cfg.camera_dropout} must be in [0, 1]")
        self.phi = TrainableCopy(prior, rank=int(cfg.lora_rank))

    def parameter_groups(self) -> list[dict]:
        return [{"name": "guidance.phi", "params": list(self.phi.adapters.values()),
                 "lr_schedule": self.cfg.lr_lora, "lr_key": "guidance.lr_lora"}]

    def phi_prediction(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor, cameras: Optional[Cameras],
                       ) -> torch.Tensor:
        """ε̂_φ,s_φ(x_t; y, c, t) with guidance over the camera."""
        cam = camera_features(cameras, x_t.shape[0], x_t.device)
        scale = float(self.cfg.guidance_scale_lora)
        if scale == 1.0:
            return self.phi.predict(x_t, t, cond, cameras, cam)
        both = self.phi.predict(torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([cond, cond]),
                                Cameras.cat([cameras, cameras]) if cameras is not None else None,
                                torch.cat([cam, torch.zeros_like(cam)]))
        eps_c, eps_0 = both.chunk(2)
        return eps_0 + scale * (eps_c - eps_0)

    def residual(self, x: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, text: TextCond,
                 cameras: Optional[Cameras], step: int, generator: Optional[torch.Generator]):
        eps = self.guided_prediction(x_t, t, text, cameras, step)
        with self.timer("prior"):
            eps_phi = self.phi_prediction(x_t, t, text.cond, cameras)
        return (eps - eps_phi).to(x.dtype), {}

    def extra_terms(self, x: torch.Tensor, text: TextCond, cameras: Optional[Cameras],
                    generator: Optional[torch.Generator]) -> dict[str, torch.Tensor]:
        loss, ratio = self.phi_loss(x, text, cameras, generator, with_ratio=True)
        return {"loss_lora": loss, "vsd_lora_ratio": ratio}

    def phi_loss(self, x: torch.Tensor, text: TextCond, cameras: Optional[Cameras],
                 generator: Optional[torch.Generator] = None, with_ratio: bool = False):
        """L_lora on the step's encoded renders ``x`` (detached here; the same encoding the VSD term used): τ over
        the whole range, camera dropped with ``camera_dropout``.

        With ``with_ratio``: (L_lora, L_lora / L_pre), L_pre being the frozen prior's loss on the same draw (τ, ε',
        renders): 1 at initialisation, below 1 as φ learns the renders' distribution. The ratio cancels most of the
        noise that the random τ puts into L_lora from one step to the next (logged as ``vsd_lora_ratio``)."""
        x = x.detach().float()
        batch, n = x.shape[0], self.prior.num_train_timesteps
        views = int(getattr(self.prior, "views", 1) or 1)
        groups = batch // views if views > 1 and batch % views == 0 else batch
        tau = torch.randint(0, n, (groups,), generator=generator, device=x.device).repeat_interleave(batch // groups)
        eps = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        abar = self.prior.alphas_cumprod.to(x.device)[tau].view(-1, *([1] * (x.dim() - 1)))
        x_tau = abar.sqrt() * x + (1 - abar).sqrt() * eps
        cam = camera_features(cameras, batch, x.device)
        keep = torch.rand(batch, generator=generator, device=x.device) >= float(self.cfg.camera_dropout)
        cam = cam * keep[:, None].to(cam.dtype)
        with self.timer("phi"):
            pred = self.phi.predict(x_tau, tau, text.cond, cameras, cam)
        loss = torch.nn.functional.mse_loss(pred, eps)
        if not with_ratio:
            return loss
        with torch.no_grad(), self.timer("prior"):
            pre = self.prior.predict(x_tau, tau, text.cond, cameras)
            ratio = loss.detach() / torch.nn.functional.mse_loss(pre, eps).clamp_min(1e-12)
        return loss, ratio
