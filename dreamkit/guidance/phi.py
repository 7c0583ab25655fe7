"""φ: the trainable copy of a diffusion prior that VSD (ProlificDreamer) distils against.

A copy of the prior's diffusers UNet with LoRA adapters (``peft``, rank r, on every attention projection: to_q, to_k,
to_v, to_out.0, as ProlificDreamer and threestudio do) and a camera input: the flattened camera-to-world matrix
(16 numbers, threestudio's "extrinsics" condition) goes through a new bias-free linear map into the UNet's time
embedding (diffusers' ``time_embedding.cond_proj``, fed through ``timestep_cond``). The LoRA B matrices and the
camera map start at zero, so at initialisation ε̂_φ equals the prior's ε̂ exactly (tests/test_vsd.py); only these
adapter weights train, and only they are saved in checkpoints (the frozen copy is rebuilt from the prior).

The same code serves the embedded tiny priors and Stable Diffusion folders (any prior with a ``unet`` attribute
whose ``predict`` accepts ``network``/``timestep_cond``). The oracle prior has no network to copy.
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
