"""Gaussians → the standard 3D Gaussian Splatting PLY (the layout of Kerbl et al.'s reference code).

Binary little-endian PLY, one ``vertex`` element with float properties
``x y z nx ny nz f_dc_0..2 f_rest_0..(3·(K−1)−1) opacity scale_0..2 rot_0..3``:
f_rest is stored channel-major (all red coefficients, then green, then blue), opacity as a logit, scales as logs,
rotations as normalised (w, x, y, z) quaternions — what SuperSplat, the antimatter15 viewer and gsplat's tools read.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch


def gaussians_to_arrays(model: Any) -> dict[str, np.ndarray]:
    with torch.no_grad():
        p = model.params
        n = model.num_gaussians
        sh0 = p["sh0"].detach().reshape(n, 3).cpu().numpy()
        if "shN" in p:
            rest = p["shN"].detach().transpose(1, 2).reshape(n, -1).cpu().numpy()
        else:
            rest = np.zeros((n, 0), dtype=np.float32)
        return {
            "means": p["means"].detach().cpu().numpy(),
            "sh0": sh0,
            "shN": rest,
            "opacity": p["opacity_logits"].detach().cpu().numpy().reshape(n, 1),
            "log_scales": p["log_scales"].detach().cpu().numpy(),
            "quats": torch.nn.functional.normalize(p["quats"].detach(), dim=-1).cpu().numpy(),
        }


def export_gaussians_ply(model: Any, path: Path, export_cfg: Any = None, **_: Any) -> Path:
    """Write the Gaussians as ``path``; a 4D model (``dynamic``) writes its canonical Gaussians (at τ_c, 0 by
    default) there and the Gaussians at each keyframe τ_k = k/(N − 1) as ``<name>_frames/frame_<k>.ply`` beside it (a
    per-frame sequence that splat viewers play)."""
    if getattr(model, "dynamic", False):
        from ..representations import canonical_scene
        from .gltf import keyframe_times

        from ..imageio_utils import unique_path

        path = Path(path)
        folder = unique_path(path.with_name(path.stem + "_frames"))  # never into an earlier export's frames
        for k, tau in enumerate(keyframe_times(export_cfg)):
            write_gaussians_ply(model.at_time(float(tau)), folder / f"frame_{k:03d}.ply")
        return write_gaussians_ply(canonical_scene(model), path)
    return write_gaussians_ply(model, path)


def write_gaussians_ply(model: Any, path: Path) -> Path:
    """One static model's Gaussians as a 3DGS PLY."""
    from plyfile import PlyData, PlyElement

    a = gaussians_to_arrays(model)
    n = a["means"].shape[0]
    names = ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
    names += [f"f_rest_{i}" for i in range(a["shN"].shape[1])]
    names += ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    data = np.concatenate([a["means"], np.zeros((n, 3), np.float32), a["sh0"], a["shN"], a["opacity"],
                           a["log_scales"], a["quats"]], axis=1).astype(np.float32)
    vertex = np.empty(n, dtype=[(name, "f4") for name in names])
    for i, name in enumerate(names):
        vertex[name] = data[:, i]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    PlyData([PlyElement.describe(vertex, "vertex")], byte_order="<").write(str(path))
    return path
