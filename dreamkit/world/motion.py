"""Motions of the tiny world's 4D scenes: a rigid motion (and a uniform scale) of an object over clip time τ ∈ [0, 1].

A motion maps τ to (s, R, t): a point p of the object at rest goes to ``s·R·p + t`` (scale and rotation about the
object's own centre, the world origin, then the translation). The world's front is +Z and a camera at azimuth 0 sees
+X on its right, so "moving right" is +X and "spinning" turns about +Y (counter-clockwise seen from above). The set
follows the design of a tiny video prior in ``shared/reference/GUIDANCE_4D.md`` §6.2: moving left / right / up /
down (a linear translation of ±``TRAVEL``), spinning (yaw 0 → 180°), bouncing (y = 0.5·|sin(πτ)| above a start
``BOUNCE_BASE`` below the centre), growing / shrinking (scale 0.6 ↔ 1.2), and still.

These are the ground truth of the 4D oracle prior (an animated target), of the tiny video prior's clips, and of
``dreamkit eval``'s motion scores.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Union

import torch

from ..errors import DreamkitError

__all__ = ["MOTIONS", "Motion", "motion_named", "split_motion_caption", "transform_points"]

#: half the travel of the linear motions (from −TRAVEL to +TRAVEL)
TRAVEL = 0.5
#: the bounce's height and the height it starts from (the object's centre)
BOUNCE_HEIGHT = 0.5
BOUNCE_BASE = -0.25
#: growing / shrinking between these scales
SCALE_RANGE = (0.6, 1.2)
#: spinning turns this many degrees over a clip
SPIN_DEGREES = 180.0


@dataclass(frozen=True)
class Motion:
    """A named motion; :meth:`transform` gives (scale [T], rotation [T, 3, 3], translation [T, 3]) at times τ [T]."""

    name: str

    def __post_init__(self) -> None:
        if self.name not in MOTIONS:
            raise DreamkitError(f"unknown motion {self.name!r} — the tiny world's motions: {', '.join(MOTIONS)}")

    def transform(self, tau: Union[torch.Tensor, float]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        tau = torch.as_tensor(tau, dtype=torch.float32).reshape(-1)
        n = tau.shape[0]
        scale = torch.ones(n)
        rotation = torch.eye(3).expand(n, 3, 3).clone()
        translation = torch.zeros(n, 3)
        name = self.name
        if name in ("moving left", "moving right"):
            sign = 1.0 if name == "moving right" else -1.0
            translation[:, 0] = sign * TRAVEL * (2 * tau - 1)
        elif name in ("moving up", "moving down"):
            sign = 1.0 if name == "moving up" else -1.0
            translation[:, 1] = sign * TRAVEL * (2 * tau - 1)
        elif name == "bouncing":
            translation[:, 1] = BOUNCE_BASE + BOUNCE_HEIGHT * torch.sin(math.pi * tau).abs()
        elif name == "spinning":
            angle = torch.deg2rad(SPIN_DEGREES * tau)
            c, s = torch.cos(angle), torch.sin(angle)
            rotation[:, 0, 0], rotation[:, 0, 2] = c, s
            rotation[:, 2, 0], rotation[:, 2, 2] = -s, c
        elif name in ("growing", "shrinking"):
            lo, hi = SCALE_RANGE
            frac = tau if name == "growing" else 1 - tau
            scale = lo + (hi - lo) * frac
        return scale, rotation, translation

    def centre(self, tau: Union[torch.Tensor, float]) -> torch.Tensor:
        """[T, 3] where the object's centre (the origin at rest) is at times τ."""
        return self.transform(tau)[2]

    def yaw_degrees(self, tau: Union[torch.Tensor, float]) -> torch.Tensor:
        """[T] the rotation about +Y at times τ, in degrees."""
        rotation = self.transform(tau)[1]
        return torch.rad2deg(torch.atan2(rotation[:, 0, 2], rotation[:, 0, 0]))

    def scale(self, tau: Union[torch.Tensor, float]) -> torch.Tensor:
        return self.transform(tau)[0]


#: every motion's name, as it appears at the end of a caption ("a red cube bouncing")
MOTIONS = ("still", "moving left", "moving right", "moving up", "moving down", "spinning", "bouncing", "growing",
           "shrinking")


def motion_named(name: str) -> Motion:
    """The motion called ``name`` (a one-line error listing the motions otherwise)."""
    return Motion(" ".join(str(name).lower().split()))


def split_motion_caption(caption: str) -> tuple[str, Motion]:
    """"a red cube bouncing" → ("a red cube", Motion("bouncing")); a caption without a motion is still."""
    text = " ".join(caption.lower().split()).strip(" .,;")
    for name in sorted(MOTIONS, key=len, reverse=True):
        if text.endswith(" " + name):
            return text[: -len(name) - 1].strip(" ,"), Motion(name)
    return text, Motion("still")


def transform_points(points: torch.Tensor, motion: Motion, tau: Union[torch.Tensor, float]) -> torch.Tensor:
    """points [V, 3] → [T, V, 3]: the points at each time τ [T] (``s·R·p + t``)."""
    scale, rotation, translation = motion.transform(tau)
    rotation, scale, translation = (x.to(points) for x in (rotation, scale, translation))
    return scale[:, None, None] * torch.einsum("tij,vj->tvi", rotation, points) + translation[:, None]
