"""Regularisers on a render's accumulated opacity, shared by every representation that renders an alpha channel."""
from __future__ import annotations

import torch


def alpha_regularizers(alpha: torch.Tensor) -> dict[str, torch.Tensor]:
    """alpha [B, H, W, 1] in [0, 1] → {"loss_sparsity": mean √(alpha² + 0.01) (threestudio's sparsity on opacity: a
    constant pull of every covered pixel towards empty), "loss_opaque": mean binary entropy of alpha (pushes each
    pixel to fully empty or fully opaque: no half-transparent haze)}."""
    a = alpha.clamp(1e-5, 1 - 1e-5)
    return {
        "loss_sparsity": torch.sqrt(alpha ** 2 + 0.01).mean(),
        "loss_opaque": (-(a * torch.log(a) + (1 - a) * torch.log(1 - a))).mean(),
    }
