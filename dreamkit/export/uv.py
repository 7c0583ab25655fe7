"""UV parametrisation with xatlas (Young, "xatlas", a fork of thekla_atlas): charts cut, flattened and packed.

xatlas splits vertices along chart seams, so the returned mesh has more vertices than the input; every per-vertex
attribute (normals, vertex colours) is carried over through xatlas's vertex mapping.
"""
from __future__ import annotations

import numpy as np

from .mesh import Mesh

__all__ = ["unwrap_uv"]


def unwrap_uv(mesh: Mesh, texture_size: int = 1024, padding: int = 4) -> Mesh:
    """A copy of ``mesh`` with per-vertex ``uvs`` [V', 2] in [0, 1] (OpenGL convention, v up).

    Args:
        texture_size: the texture resolution the charts are packed for (xatlas packs in texels).
        padding: texels left empty between charts, so dilation (:func:`dreamkit.export.bake.pad_texture`) and
            bilinear / mip-mapped lookups do not mix neighbouring charts.
    """
    import xatlas

    atlas = xatlas.Atlas()
    atlas.add_mesh(mesh.verts.astype(np.float32), mesh.faces.astype(np.uint32))
    pack = xatlas.PackOptions()
    pack.resolution = int(texture_size)
    pack.padding = int(padding)
    pack.bilinear = True
    pack.bruteForce = False
    atlas.generate(xatlas.ChartOptions(), pack)
    vmapping, faces, uvs = atlas[0]
    vmapping = np.asarray(vmapping, dtype=np.int64)
    # xatlas's UV origin is at the first texel row, which we store as the image's top row → flip v to OpenGL.
    uvs = np.asarray(uvs, dtype=np.float32).copy()
    uvs[:, 1] = 1.0 - uvs[:, 1]
    return mesh.copy(
        verts=mesh.verts[vmapping],
        faces=np.asarray(faces, dtype=np.int64),
        normals=None if mesh.normals is None else mesh.normals[vmapping],
        vertex_colors=None if mesh.vertex_colors is None else mesh.vertex_colors[vmapping],
        uvs=uvs,
    )
