"""Does a clip move as its prompt says? Tracks of the object in a clip's frames and a verdict per motion.

Used by ``scripts/video_motion_probe.py`` (the tiny video prior's motion probe, issue 23) and ``dreamkit sample
--score`` for video priors. A clip is F frames [F, 3, H, W] in [0, 1] seen by one still camera; the object is the
pixels that differ from the world's background (and, when the prompt names a colour, have that colour's hue). Its
centroid and area per frame give the verdicts for the linear motions, bouncing, growing and shrinking; spinning (an
object turning in place) changes how the object looks without moving it, so its verdict compares the frame-to-frame
change of the object's pixels with that of still clips of the same prompt (``still_change``).

Distances are in pixels of a 32² image (scaled by H/32). The thresholds are well inside what the world's own clips
do (``tests/test_video_prior.py`` judges ground-truth renders): moving left/right travels ≈ 14 px, up/down ≈ 12 px,
a bounce rises ≈ 8 px.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch

from ..world.shapes import COLOURS
from .world_metrics import BACKGROUND

__all__ = ["object_masks", "track", "appearance_change", "judge_clip", "MOVES"]

#: motions judged from the object's track
MOVES = ("moving left", "moving right", "moving up", "moving down", "bouncing", "growing", "shrinking", "still")
#: net travel a linear motion must reach, and the largest step against it (32² pixels)
MIN_TRAVEL = 4.0
MAX_BACKSTEP = 0.75
#: a bounce rises and falls at least this much, its top strictly inside the clip
MIN_BOUNCE = 2.0
#: growing / shrinking: the area changes by this factor at least
MIN_AREA_RATIO = 1.5
#: a still or spinning object's centroid stays within this distance of where it starts
MAX_DRIFT = 2.0
MIN_AREA = 4.0


def object_masks(frames: torch.Tensor, colour: Optional[str] = None, background: Sequence[float] = BACKGROUND,
                 threshold: float = 0.12, hue_tolerance: float = 30.0) -> torch.Tensor:
    """[F, 3, H, W] in [0, 1] → [F, H, W] bool: pixels off the background, of ``colour``'s hue when given."""
    bg = torch.tensor(background, dtype=frames.dtype, device=frames.device).view(1, 3, 1, 1)
    mask = (frames - bg).abs().amax(1) > threshold
    if colour is None:
        return mask
    rgb = frames.clamp(0, 1)
    mx, mn = rgb.amax(1), rgb.amin(1)
    chroma = mx - mn
    r, g, b = rgb.unbind(1)
    safe = chroma.clamp_min(1e-6)
    hue = torch.where(mx == r, ((g - b) / safe) % 6, torch.where(mx == g, (b - r) / safe + 2, (r - g) / safe + 4))
    hue = hue * 60.0
    target = COLOURS[colour].hue
    d = (hue - target).abs() % 360.0
    d = torch.minimum(d, 360.0 - d)
    saturated = chroma / mx.clamp_min(1e-6) >= 0.25
    return mask & saturated & (d <= hue_tolerance)


def track(frames: torch.Tensor, colour: Optional[str] = None) -> dict[str, torch.Tensor]:
    """{"x", "y" [F] centroid (pixels, NaN in an empty frame), "area" [F] pixels, "mask" [F, H, W]}."""
    mask = object_masks(frames, colour)
    f, h, w = mask.shape
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32),
                            indexing="ij")
    m = mask.float()
    area = m.sum((1, 2))
    safe = area.clamp_min(1)
    x = torch.where(area > 0, (m * xs).sum((1, 2)) / safe, torch.full_like(area, math.nan))
    y = torch.where(area > 0, (m * ys).sum((1, 2)) / safe, torch.full_like(area, math.nan))
    return {"x": x, "y": y, "area": area, "mask": mask}


def appearance_change(frames: torch.Tensor, mask: torch.Tensor) -> float:
    """Mean absolute colour change between consecutive frames over the object's pixels (the union of the two
    frames' masks): how much the object's look changes from frame to frame."""
    diffs = []
    for i in range(1, frames.shape[0]):
        union = mask[i] | mask[i - 1]
        if bool(union.any()):
            diffs.append(float((frames[i] - frames[i - 1]).abs().amax(0)[union].mean()))
    return sum(diffs) / len(diffs) if diffs else 0.0


def judge_clip(frames: torch.Tensor, motion: str, colour: Optional[str] = None,
               still_change: Optional[float] = None) -> dict:
    """Whether the clip [F, 3, H, W] shows ``motion`` (one of the world's motions). Returns {"ok", "why", "x", "y",
    "area", "change"}; "spinning" needs ``still_change``, the appearance change of still clips of the same object
    (the clip must change at least twice as much and stay in place)."""
    scale = frames.shape[-1] / 32.0
    tr = track(frames, colour)
    x, y, area = tr["x"], tr["y"], tr["area"]
    change = appearance_change(frames, tr["mask"])
    out = {"x": [round(float(v), 2) for v in x], "y": [round(float(v), 2) for v in y],
           "area": [int(a) for a in area], "change": round(change, 4)}

    def verdict(ok: bool, why: str) -> dict:
        return {**out, "ok": bool(ok), "why": why}

    if bool((area < MIN_AREA * scale ** 2).any()):
        return verdict(False, "no object in some frame")
    if motion in ("moving left", "moving right", "moving up", "moving down"):
        axis = x if motion in ("moving left", "moving right") else y
        sign = -1.0 if motion in ("moving left", "moving up") else 1.0  # image y grows downwards
        steps = sign * axis.diff()
        travel = float(sign * (axis[-1] - axis[0]))
        if travel < MIN_TRAVEL * scale:
            return verdict(False, f"travels {travel / scale:.1f} px, needs {MIN_TRAVEL}")
        if float(steps.min()) < -MAX_BACKSTEP * scale:
            return verdict(False, f"steps back {-float(steps.min()) / scale:.1f} px")
        return verdict(True, f"travels {travel / scale:.1f} px")
    if motion == "bouncing":
        top = int(y.argmin())
        rise, fall = float(y[0] - y[top]) / scale, float(y[-1] - y[top]) / scale
        ok = 0 < top < len(y) - 1 and rise >= MIN_BOUNCE and fall >= MIN_BOUNCE
        return verdict(ok, f"top at frame {top}, rises {rise:.1f} px, falls {fall:.1f} px")
    if motion in ("growing", "shrinking"):
        ratio = float(area[-1] / area[0]) if motion == "growing" else float(area[0] / area[-1])
        return verdict(ratio >= MIN_AREA_RATIO, f"area ×{ratio:.2f}")
    drift = float(torch.sqrt((x - x[0]) ** 2 + (y - y[0]) ** 2).max()) / scale
    if motion == "still":
        return verdict(drift <= MAX_DRIFT, f"drifts {drift:.1f} px")
    if motion == "spinning":
        if still_change is None:
            raise ValueError("judging spinning needs still_change (the appearance change of still clips)")
        if drift > MAX_DRIFT:
            return verdict(False, f"drifts {drift:.1f} px")
        ok = change >= 2 * still_change and change > 0.02
        return verdict(ok, f"changes {change:.3f} per frame, still clips {still_change:.3f}")
    raise ValueError(f"unknown motion {motion!r}")
