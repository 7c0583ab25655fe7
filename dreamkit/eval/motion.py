"""Motion scores of a 4D fit against the tiny world's ground-truth motion (``dreamkit eval`` on prompts such as
"a red cube bouncing").

What is scored is what the animated GLB holds: the mesh extracted at the canonical time τ_c (0 unless the recipe
sets ``representation.canonical_time``) and its vertices moved by the fit's deformation field at the export's
keyframes (``model.displacement``, the GLB's morph targets). Per keyframe τ_k (the tracks start at τ = 0):

* the centroid track: the area-weighted centroid of the moved surface minus its centroid at τ = 0, against the
  truth's (its centre's path, :meth:`dreamkit.world.motion.Motion.transform` applied to the truth's centroid);
  ``track_error`` is the mean distance between the two over the keyframes (world units; world objects are ~1.3 across
  and the motions travel 0.5–1.0);
* the turn about +Y: the rotation that best maps the centred surface at τ = 0 onto the one at τ_k (Kabsch, weighted
  by area; the field gives the correspondences), as a yaw, against the truth's; ``yaw_error`` in degrees;
* the scale: the ratio of the surface's RMS radius at τ_k to that at τ = 0, against the truth's; ``scale_error``.

``motion_ok`` when track_error ≤ :data:`TRACK_TOLERANCE`, yaw_error ≤ :data:`YAW_TOLERANCE` and scale_error ≤
:data:`SCALE_TOLERANCE`; with the shape and colour verdict of the τ_c mesh against the truth placed at τ_c, a
4D row is ``ok`` when both hold.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import torch

from ..world.motion import Motion, transform_points

__all__ = ["MovedScene", "TRACK_TOLERANCE", "YAW_TOLERANCE", "SCALE_TOLERANCE", "score_motion", "yaw_of"]

TRACK_TOLERANCE = 0.15
YAW_TOLERANCE = 30.0
SCALE_TOLERANCE = 0.15


class MovedScene:
    """A world scene whose ground-truth mesh is placed as its motion has it at time τ (everything else delegates)."""

    def __init__(self, scene: Any, motion: Motion, tau: float = 0.0):
        self._scene, self._motion, self._tau = scene, motion, float(tau)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._scene, name)

    def mesh(self, device: Any = "cpu"):
        verts, faces, colours = self._scene.mesh(device)
        return transform_points(verts, self._motion, self._tau)[0].to(verts), faces, colours


def _area_weights(verts: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """[V] each vertex's share of the surface (a third of its faces' areas)."""
    tri = verts[faces]
    area = torch.linalg.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]).norm(dim=-1) / 2
    w = torch.zeros(len(verts), dtype=verts.dtype).index_add_(0, faces.reshape(-1), area.repeat_interleave(3) / 3)
    return w / w.sum().clamp_min(1e-12)


def yaw_of(source: torch.Tensor, target: torch.Tensor, weights: torch.Tensor) -> float:
    """The turn about +Y (degrees, in (−180, 180]) of the weighted least-squares rotation (Kabsch) that maps the
    centred ``source`` points [V, 3] onto the centred ``target`` points (the same order: correspondences)."""
    w = weights[:, None]
    a = source - (w * source).sum(0)
    b = target - (w * target).sum(0)
    h = (w * a).T @ b  # 3 × 3 covariance
    u, _, vt = torch.linalg.svd(h.double())
    d = torch.sign(torch.det(vt.T @ u.T))
    rot = vt.T @ torch.diag(torch.tensor([1.0, 1.0, float(d)], dtype=torch.float64)) @ u.T
    return math.degrees(math.atan2(float(rot[0, 2]), float(rot[0, 0])))


def _unwrap(degrees: Sequence[float]) -> np.ndarray:
    return np.rad2deg(np.unwrap(np.deg2rad(np.asarray(degrees, dtype=np.float64))))


@torch.no_grad()
def score_motion(model: Any, mesh: Any, scene: Any, motion: Motion, keyframes: int = 16) -> dict:
    """The motion scores (module docstring) of a 4D ``model`` whose canonical (τ_c) surface is ``mesh`` (an exported
    :class:`~dreamkit.export.mesh.Mesh`), against ``scene`` moving by ``motion``."""
    param = next(model.parameters())
    verts = torch.as_tensor(mesh.verts, dtype=torch.float32)
    faces = torch.as_tensor(mesh.faces, dtype=torch.long)
    taus = torch.linspace(0, 1, keyframes)
    disp = model.displacement(verts.to(param), taus.to(param)).float().cpu()  # [K, V, 3]
    weights = _area_weights(verts, faces)
    moved = verts[None] + disp
    centroids = (weights[None, :, None] * moved).sum(1)  # [K, 3]
    track = centroids - centroids[0]

    gv, gf, _ = scene.mesh()
    g_weights = _area_weights(gv, gf)
    g_moved = transform_points(gv, motion, taus)  # [K, V, 3]
    g_centroids = (g_weights[None, :, None] * g_moved).sum(1)
    g_track = g_centroids - g_centroids[0]
    track_error = float((track - g_track).norm(dim=-1).mean())

    yaw = _unwrap([yaw_of(moved[0], moved[k], weights) for k in range(keyframes)])
    g_yaw = _unwrap([yaw_of(g_moved[0], g_moved[k], g_weights) for k in range(keyframes)])
    yaw_error = float(np.abs((yaw - yaw[0]) - (g_yaw - g_yaw[0])).mean())

    def rms_radius(points: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        centre = (w[:, None] * points).sum(0)
        return ((w * (points - centre).square().sum(-1)).sum()).sqrt()

    scale = torch.stack([rms_radius(moved[k], weights) for k in range(keyframes)])
    g_scale = torch.stack([rms_radius(g_moved[k], g_weights) for k in range(keyframes)])
    scale_error = float(((scale / scale[0]) - (g_scale / g_scale[0])).abs().mean())
    ok = track_error <= TRACK_TOLERANCE and yaw_error <= YAW_TOLERANCE and scale_error <= SCALE_TOLERANCE
    return {
        "motion": motion.name,
        "track_error": round(track_error, 4),
        "travel": round(float(track.norm(dim=-1).max()), 3),
        "travel_truth": round(float(g_track.norm(dim=-1).max()), 3),
        "yaw_error": round(yaw_error, 2),
        "yaw_end": round(float(yaw[-1] - yaw[0]), 1),
        "scale_error": round(scale_error, 4),
        "motion_ok": bool(ok),
    }
