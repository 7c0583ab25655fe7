"""φ: the trainable copy of a diffusion prior that VSD (ProlificDreamer) distils against.

A copy of the prior's diffusers UNet with LoRA adapters (``peft``, rank r, on every attention projection: to_q, to_k,
to_v, to_out.0, as ProlificDreamer and threestudio do) and a camera input: the flattened camera-to-world matrix
(16 numbers, threestudio's "extrinsics" condition) goes through a new bias-free linear map into the UNet's time
embedding (diffusers' ``time_embedding.cond_proj``, fed through ``timestep_cond``). The LoRA B matrices and the
camera map start at zero, so at initialisation ε̂_φ equals the prior's ε̂ exactly (tests/test_vsd.py); only these
adapter weights train, and only they are saved in checkpoints (the frozen copy is rebuilt from the prior).

The same code serves the embedded tiny priors and Stable Diffusion folders (any prior with a ``unet`` attribute
whose ``predict`` accepts ``network``/``timestep_cond``). The oracle prior has no network to copy: its φ is
:class:`ResidualPhi`, the prior's exact ε̂ plus a small trainable ε-network whose output layer starts at zero.
"""
from __future__ import annotations

import copy
from typing import Optional

import torch
from torch import nn

from ..cameras import Cameras
from ..errors import ConfigError

CAMERA_DIM = 16
LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")


def camera_features(cameras: Optional[Cameras], batch: int, device, dtype=torch.float32) -> torch.Tensor:
    """[B, 16]: each camera's flattened camera-to-world matrix (zeros without cameras: the "no camera" input).
    Unlike ``dreamkit.priors.multiview.camera_features`` the translation is kept as it is, so φ sees the distance
    (threestudio's "extrinsics" condition)."""
    if cameras is None:
        return torch.zeros(batch, CAMERA_DIM, device=device, dtype=dtype)
    return cameras.c2w.reshape(-1, CAMERA_DIM).to(device=device, dtype=dtype)


def build_phi(prior, rank: int = 4) -> nn.Module:
    """φ for ``prior``: a LoRA copy of its UNet (:class:`TrainableCopy`), or, for a prior without a network (the
    oracle), :class:`ResidualPhi`."""
    if getattr(prior, "unet", None) is None:
        return ResidualPhi(prior)
    return TrainableCopy(prior, rank=rank)


class TrainableCopy(nn.Module):
    """φ for VSD. ``predict(x_t, t, cond, cameras, camera_input)`` runs the prior's own input path on the copy."""

    def __init__(self, prior, rank: int = 4, dtype: torch.dtype = torch.float32):
        super().__init__()
        unet = getattr(prior, "unet", None)
        if unet is None:
            raise ConfigError(f"guidance.name=vsd needs a prior with a denoising network to copy (pixel or "
                              f"stable-diffusion); the {type(prior).__name__} has none — use guidance.name=sds or asd")
        if rank < 1:
            raise ConfigError(f"guidance.lora_rank={rank} must be ≥ 1")
        try:
            from peft import LoraConfig
        except ImportError as err:  # a dependency of dreamkit; say so rather than fail obscurely
            raise ConfigError("guidance.name=vsd needs peft (a dreamkit dependency): pip install peft") from err
        device = next(unet.parameters()).device
        phi = copy.deepcopy(unet)
        if next(phi.parameters()).dtype != dtype:  # fp16 priors on CUDA: φ trains in float32
            phi = phi.to(dtype=dtype)
        phi.requires_grad_(False)
        phi.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights=True,
                                   target_modules=list(LORA_TARGETS)))
        embed = phi.time_embedding
        embed.cond_proj = nn.Linear(CAMERA_DIM, embed.linear_1.in_features, bias=False).to(device, dtype)
        nn.init.zeros_(embed.cond_proj.weight)
        for name, param in phi.named_parameters():
            param.requires_grad_("lora_" in name or name.startswith("time_embedding.cond_proj"))
        phi.train()
        # the frozen copy is not a submodule (never saved: it is the prior's own weights); the trainable tensors are
        # registered here, so they are saved, loaded and moved with the guidance module
        object.__setattr__(self, "network", phi)
        object.__setattr__(self, "prior", prior)
        self.adapters = nn.ParameterDict({name.replace(".", "__"): p for name, p in phi.named_parameters()
                                          if p.requires_grad})

    def predict(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor, cameras: Optional[Cameras],
                camera_input: torch.Tensor) -> torch.Tensor:
        """ε̂_φ(x_t; y, c, t) [B, ...] float32 with ``camera_input`` [B, 16] (zeros = no camera)."""
        return self.prior.predict(x_t, t, cond, cameras, network=self.network, timestep_cond=camera_input)

    def num_trainable(self) -> int:
        return sum(p.numel() for p in self.adapters.values())


class _TimeFeatures(nn.Module):
    """Sinusoidal features of t / T (Transformer / DDPM timestep embedding) → an MLP."""

    def __init__(self, dim: int, num_train_timesteps: int):
        super().__init__()
        self.dim, self.n = dim, num_train_timesteps
        self.mlp = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        half = self.dim // 2
        freqs = torch.exp(-torch.arange(half, device=t.device, dtype=torch.float32) * (9.21 / max(half - 1, 1)))
        angles = (t.float() / self.n * 1000.0)[:, None] * freqs[None]
        return self.mlp(torch.cat([angles.sin(), angles.cos()], 1))


class ResidualPhi(nn.Module):
    """φ for a prior with no network to copy (the oracle): ε̂_φ(x_t; y, c, t) = ε̂_prior(x_t; y, t) + δ(x_t, t, y, c).

    δ is a small convolutional ε-network (three 3×3 convolutions of ``width`` channels at the prior's resolution,
    scaled and shifted by an embedding of t, the text condition and the camera, FiLM-style) whose last convolution
    starts at zero, so at initialisation φ equals the prior exactly, as the LoRA copy does; only δ trains. The text
    condition enters through its flattened vector when it is one per image (the oracle's [B, K] target weights) and
    is ignored otherwise.
    """

    def __init__(self, prior, width: int = 32, embed_dim: int = 64):
        super().__init__()
        object.__setattr__(self, "prior", prior)
        channels = int(prior.channels)
        device = prior.alphas_cumprod.device
        self.time = _TimeFeatures(embed_dim, prior.num_train_timesteps)
        self.camera = nn.Linear(CAMERA_DIM, embed_dim)
        self.text_dim = int(getattr(prior, "num_targets", 0))
        self.text = nn.Linear(self.text_dim, embed_dim) if self.text_dim else None
        self.conv_in = nn.Conv2d(channels, width, 3, padding=1)
        self.film = nn.Linear(embed_dim, 2 * width)
        self.conv_mid = nn.Conv2d(width, width, 3, padding=1)
        self.conv_out = nn.Conv2d(width, channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)
        self.to(device)

    @property
    def adapters(self) -> dict[str, nn.Parameter]:
        """Every trainable tensor of φ (all of δ; the prior is not a submodule)."""
        return dict(self.named_parameters())

    def delta(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor, camera_input: torch.Tensor
              ) -> torch.Tensor:
        emb = self.time(t) + self.camera(camera_input)
        if self.text is not None and cond.dim() == 2 and cond.shape[1] == self.text_dim:
            emb = emb + self.text(cond.float())
        scale, shift = self.film(nn.functional.silu(emb)).chunk(2, dim=1)
        h = nn.functional.silu(self.conv_in(x_t.float()))
        h = h * (1 + scale[:, :, None, None]) + shift[:, :, None, None]
        h = nn.functional.silu(self.conv_mid(h))
        return self.conv_out(h)

    def predict(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor, cameras: Optional[Cameras],
                camera_input: torch.Tensor) -> torch.Tensor:
        """ε̂_φ [B, ...] float32 with ``camera_input`` [B, 16] (zeros = no camera)."""
        with torch.no_grad():
            base = self.prior.predict(x_t, t, cond, cameras).float()
        return base + self.delta(x_t, t, cond, camera_input)

    def num_trainable(self) -> int:
        return sum(p.numel() for p in self.adapters.values())
