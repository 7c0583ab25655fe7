"""Triplane field (Chan et al. 2022, EG3D): three axis-aligned feature planes + a small MLP decoder, volume-rendered.

A point x ∈ aabb (normalised to [-1, 1]³) reads bilinearly from the XY, XZ and YZ planes (each C×R×R); the three
C-vectors are summed (EG3D aggregates by summation) and decoded by an MLP to (raw σ, geometry features); albedo is a
second small MLP, as in :mod:`.nerf`, whose :class:`~.nerf.VolumeModel` supplies rendering, the density blob,
normals, regularisers and the occupancy grid.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import nn

from ..config import sched
from .nerf import VolumeModel, VolumeRenderConfig

__all__ = ["TriplaneConfig", "TriplaneModel"]


@dataclass
class TriplaneConfig(VolumeRenderConfig):
    name: str = "triplane"
    #: planes: C channels at R×R each
    plane_channels: int = 16
    plane_resolution: int = 128
    plane_init_std: float = 0.1
    lr_planes: Any = sched(1e-2)


class TriplaneModel(VolumeModel):
    """Parameter groups: "triplane.planes", "triplane.network"."""

    def __init__(self, cfg: Any, generator: Optional[torch.Generator] = None):
        super().__init__()
        self.cfg = cfg
        generator = generator if generator is not None else torch.Generator().manual_seed(0)
        self._init_volume(cfg)
        C, R = cfg.plane_channels, cfg.plane_resolution
        self.planes = nn.Parameter(torch.randn(3, C, R, R, generator=generator) * cfg.plane_init_std)
        self._init_decoder(C, generator)
        self._init_time_field(C, generator)

    def features(self, points01: torch.Tensor) -> torch.Tensor:
        """points [N, 3] in [0,1] → summed plane features [N, C]."""
        p = points01 * 2 - 1
        # grid_sample's (x, y) index (W, H): plane 0 = XY, 1 = XZ, 2 = YZ
        coords = torch.stack([p[:, [0, 1]], p[:, [0, 2]], p[:, [1, 2]]])             # [3, N, 2]
        feats = torch.nn.functional.grid_sample(self.planes, coords[:, :, None], mode="bilinear",
                                                padding_mode="border", align_corners=True)  # [3, C, N, 1]
        return feats.sum(0)[..., 0].t()

    def parameter_groups(self) -> list[dict]:
        cfg = self.cfg
        return [
            {"name": "triplane.planes", "params": [self.planes], "lr_schedule": cfg.lr_planes,
             "lr_key": "representation.lr_planes"},
            self._network_group("triplane"),
        ] + self._time_groups()
