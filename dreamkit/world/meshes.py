"""Loading coloured triangle meshes (PLY / OBJ / GLB) as tensors for the rasterizer and the oracle prior."""
from __future__ import annotations

from pathlib import Path
from typing import Union

import numpy as np
import torch

from ..assets import asset_path
from ..errors import DreamkitError

__all__ = ["load_colored_mesh"]


def load_colored_mesh(path: Union[str, Path]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Read a mesh with flat colours.

    ``path`` is an existing file or an asset name (see :func:`dreamkit.assets.asset_path`, e.g.
    ``"meshes/house.ply"``). Scenes (GLB with several nodes) are flattened into one mesh. Colours come from, in
    order: vertex colours (a face takes the mean of its three corners, which is exact when, as in our assets,
    vertices are split between colour regions), face colours, a texture (sampled per vertex by trimesh), else grey.

    Returns:
        verts [V, 3] float32, faces [F, 3] long, face_colors [F, 3] float32 in [0, 1].
    """
    import trimesh  # imported here: loading meshes is the only place that needs it

    resolved = asset_path(path)
    try:
        mesh = trimesh.load(str(resolved), force="mesh", process=False)
    except Exception as err:  # trimesh raises many types for unreadable files
        raise DreamkitError(f"cannot read mesh {str(resolved)!r}: {err}") from err
    if not isinstance(mesh, trimesh.Trimesh) or len(mesh.faces) == 0:
        raise DreamkitError(f"{str(resolved)!r} holds no triangles")

    faces = np.asarray(mesh.faces, dtype=np.int64)
    visual = mesh.visual
    colors = None
    if visual is not None and visual.kind == "texture":
        visual = visual.to_color()
    if visual is not None and visual.kind == "vertex":
        vc = np.asarray(visual.vertex_colors, dtype=np.float64)[:, :3] / 255.0
        colors = vc[faces].mean(axis=1)
    elif visual is not None and visual.kind == "face":
        colors = np.asarray(visual.face_colors, dtype=np.float64)[:, :3] / 255.0
    if colors is None:
        colors = np.full((len(faces), 3), 0.7)
    return (
        torch.as_tensor(np.asarray(mesh.vertices), dtype=torch.float32),
        torch.as_tensor(faces, dtype=torch.long),
        torch.as_tensor(colors, dtype=torch.float32),
    )
