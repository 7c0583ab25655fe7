"""Variational score distillation (VSD), ProlificDreamer (Wang et al. 2023).

    g_VSD = w(t) · ( ε̂_s(x_t; y, t) − ε̂_φ,s_φ(x_t; y, c, t) )

ε̂_s: the frozen prior with classifier-free guidance s (view-dependent text where the recipe asks for it). ε̂_φ: a
trainable copy of the prior (:class:`~dreamkit.guidance.phi.TrainableCopy`: LoRA + a camera input; for the oracle
prior, which has no network to copy, :class:`~dreamkit.guidance.phi.ResidualPhi`), fed the
conditional text and the camera c; its guidance is over the camera, ε̂_φ(∅) + s_φ·(ε̂_φ(c) − ε̂_φ(∅)) with ∅ a zero
camera (``guidance_scale_lora``, 1 by default: just ε̂_φ(c)). Both predictions share x_t, t and ε, so ε cancels.

φ trains on the same step's renders (detached) with the diffusion loss over the full timestep range:

    L_lora = ‖ ε̂_φ(α_τ·sg(x) + σ_τ·ε'; y, c̃, τ) − ε' ‖²  (mean),   τ ~ U{0 … T−1},  c̃ = c or ∅ with p = camera_dropout

logged and weighted as ``loss_lora`` (``loss.lambda_lora``), with ``vsd_lora_ratio`` = L_lora / the frozen prior's loss
on the same draw (1 at initialisation, below 1 once φ fits the renders better than the prior); it reaches only φ (x is detached) and the VSD gradient
only the 3D parameters. φ's parameters are a separate optimizer group at ``guidance.lr_lora``. One φ step per 3D step
(ProlificDreamer's K = 1) by default, or every ``lora_every`` steps (φ's optimizer is its own, stepped on that
cadence). For a v-prediction prior the loss compares ε predictions (the prior's adapter converts v
to ε), which weights timesteps differently from a v-space loss.

Defaults (threestudio's prolificdreamer.yaml): s = 7.5, s_φ = 1, w(t) = 1 − ᾱ_t, camera dropout 0.1, LoRA rank 4.
Particles (ProlificDreamer's n_particles): ``particles: N`` in a recipe fits N representations that share φ
(``dreamkit.representations.particles``). Not built: the HiFA image-space term.

Exact properties (tests/test_vsd.py): at initialisation (zero adapters) ε̂_φ = ε̂_pre, so
g = w(t)·(s − 1)·(ε̂_c − ε̂_u), and g = 0 at s = 1; L_lora sends no gradient to the renders.
"""
from dataclasses import dataclass
from typing import Any, Optional

import torch

from ..batch import Batch
from ..cameras import Cameras
from ..config import sched
from .base import ScoreDistillation, ScoreDistillationConfig
from .phi import build_phi, camera_features

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
    #: φ trains (its loss is computed and its optimizer steps) every this many 3D steps (ProlificDreamer: 1)
    lora_every: int = 1


class VSDGuidance(ScoreDistillation):
    """VSD loss (``loss_vsd``) and φ's diffusion loss (``loss_lora``)."""

    loss_name = "vsd"
    loss_names = ("vsd", "lora")

    def __init__(self, cfg: Any, prior, max_steps: int):
        super().__init__(cfg, prior, max_steps)
        from ..errors import ConfigError

        if not 0.0 <= float(cfg.camera_dropout) <= 1.0:
            raise ConfigError(f"guidance.camera_dropout={cfg.camera_dropout} must be in [0, 1]")
        if int(cfg.lora_every) < 1:
            raise ConfigError(f"guidance.lora_every={cfg.lora_every} must be ≥ 1 (φ trains every that many steps)")
        self.update_every = int(cfg.lora_every)
        self.phi = build_phi(prior, rank=int(cfg.lora_rank))

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

    def residual(self, x: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, batch: Batch,
                 step: int, generator: Optional[torch.Generator]):
        eps = self.guided_prediction(x_t, t, batch, step)
        with self.timer("prior"):
            eps_phi = self.phi_prediction(x_t, t, batch.text.cond, batch.cameras)
        return (eps - eps_phi).to(x.dtype), {}

    def extra_terms(self, x: torch.Tensor, batch: Batch, step: int,
                    generator: Optional[torch.Generator]) -> dict[str, torch.Tensor]:
        if step % self.update_every:
            return {}  # not one of φ's steps (its optimizer does not step either)
        loss, ratio = self.phi_loss(x, batch, generator, with_ratio=True)
        return {"loss_lora": loss, "vsd_lora_ratio": ratio}

    def phi_loss(self, x: torch.Tensor, batch: Batch, generator: Optional[torch.Generator] = None,
                 with_ratio: bool = False):
        """L_lora on the step's encoded renders ``x`` (detached here; the same encoding the VSD term used): τ over
        the whole range, camera dropped with ``camera_dropout``.

        With ``with_ratio``: (L_lora, L_lora / L_pre), L_pre being the frozen prior's loss on the same draw (τ, ε',
        renders): 1 at initialisation, below 1 as φ learns the renders' distribution. The ratio cancels most of the
        noise that the random τ puts into L_lora from one step to the next (logged as ``vsd_lora_ratio``)."""
        x = x.detach().float()
        size, n = x.shape[0], self.prior.num_train_timesteps
        text, cameras, layout = batch.text, batch.cameras, batch.layout
        tau = layout.per_image(torch.randint(0, n, (layout.groups(size),), generator=generator, device=x.device))
        eps = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        abar = self.prior.alphas_cumprod.to(x.device)[tau].view(-1, *([1] * (x.dim() - 1)))
        x_tau = abar.sqrt() * x + (1 - abar).sqrt() * eps
        cam = camera_features(cameras, size, x.device)
        keep = torch.rand(size, generator=generator, device=x.device) >= float(self.cfg.camera_dropout)
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
