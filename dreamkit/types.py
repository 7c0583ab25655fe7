"""Typed values that cross component boundaries (see the data flow in docs/architecture.md)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import torch


@dataclass
class RenderOutput:
    """What every representation's ``render`` returns. Channels last, as gsplat.

    Attributes:
        rgb: [B, H, W, 3] in [0, 1], composited over the background.
        alpha: [B, H, W, 1] accumulated opacity.
        depth: [B, H, W, 1] expected depth along the camera's +z (0 where empty).
        normal: optional [B, H, W, 3] world-space normals.
        extras: representation-specific tensors (e.g. Gaussians' ``means2d`` and ``radii`` for densification).
    """

    rgb: torch.Tensor
    alpha: torch.Tensor
    depth: torch.Tensor
    normal: Optional[torch.Tensor] = None
    extras: dict[str, Any] = field(default_factory=dict)


@dataclass
class TextCond:
    """Encoded prompts. Index 0..P-1 are prompt variants (e.g. view-dependent suffixes).

    ``cond`` and ``uncond`` are prior-specific: [P, T, D] token embeddings for diffusers priors, [P, K] target
    weights for the oracle prior. ``select(index)`` gathers one variant per batch element.
    """

    cond: torch.Tensor
    uncond: torch.Tensor
    prompts: list[str] = field(default_factory=list)

    def select(self, index: torch.Tensor) -> "TextCond":
        index = index.to(self.cond.device)
        return TextCond(self.cond[index], self.uncond[index], [self.prompts[i] for i in index.tolist()])

    def to(self, device) -> "TextCond":
        return TextCond(self.cond.to(device), self.uncond.to(device), list(self.prompts))
