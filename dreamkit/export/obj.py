"""Wavefront OBJ + MTL with PNG texture files (Y up, metres, counter-clockwise faces).

Files for ``name.obj``: ``name.mtl``, ``name_basecolor.png`` (``map_Kd``), and with an ORM texture the PBR
extension maps of the MTL format (as Blender and three.js read them): ``name_roughness.png`` (``map_Pr``) and
``name_metallic.png`` (``map_Pm``); ``name_normal.png`` (``norm``) with a normal map. Without a texture, vertex
colours go on the ``v`` lines (``v x y z r g b``, the common extension that trimesh, MeshLab and Blender read)
and no MTL is written. ``illum 0`` marks colours that already hold the lighting (:attr:`Mesh.unlit`); ``illum 2``
otherwise.
OBJ UVs use the OpenGL convention (v up), the same as :class:`~dreamkit.export.mesh.Mesh`.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .gltf import encode_png
from .mesh import Mesh, apply_origin, vertex_normals

__all__ = ["write_obj"]


def _rows(fmt: str, array: np.ndarray) -> str:
    if len(array) == 0:
        return ""
    return "\n".join(fmt % tuple(row) for row in array.tolist()) + "\n"


def write_obj(mesh: Mesh, path: str | Path, origin: str = "keep") -> Path:
    """Write ``mesh`` as ``path`` (.obj) with its .mtl and texture PNGs beside it; returns the OBJ path."""
    if mesh.num_faces == 0:
        raise ValueError("cannot write an empty mesh")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    mesh = apply_origin(mesh, origin)
    stem = path.stem
    normals = mesh.normals if mesh.normals is not None else vertex_normals(mesh.verts, mesh.faces)
    textured = mesh.uvs is not None and mesh.base_color is not None

    # illum 0 ("colour on, ambient off": Kd shown as it is) for colours that already hold the lighting, else 2
    mtl = [f"# dreamkit material for {path.name}", "newmtl material0", "Ka 0 0 0", "Kd 1 1 1", "Ks 0 0 0",
           "d 1", "illum 0" if mesh.unlit else "illum 2"]
    if textured:
        (path.parent / f"{stem}_basecolor.png").write_bytes(encode_png(mesh.base_color))
        mtl.append(f"map_Kd {stem}_basecolor.png")
        if mesh.orm is not None:
            (path.parent / f"{stem}_roughness.png").write_bytes(encode_png(mesh.orm[..., 1]))
            (path.parent / f"{stem}_metallic.png").write_bytes(encode_png(mesh.orm[..., 2]))
            mtl += ["Pr 1", f"map_Pr {stem}_roughness.png", "Pm 1", f"map_Pm {stem}_metallic.png"]
        else:
            mtl += [f"Pr {mesh.roughness:.6g}", f"Pm {mesh.metallic:.6g}"]
        if mesh.normal_map is not None:
            (path.parent / f"{stem}_normal.png").write_bytes(encode_png(mesh.normal_map))
            mtl.append(f"norm {stem}_normal.png")
    parts = [f"# dreamkit: {mesh.num_verts} vertices, {mesh.num_faces} faces; +Y up, metres\n"]
    if textured:  # without a texture no MTL: readers then keep the vertex colours of the v lines
        (path.parent / f"{stem}.mtl").write_text("\n".join(mtl) + "\n")
        parts += [f"mtllib {stem}.mtl\n"]
    parts.append("o mesh\n")
    if mesh.vertex_colors is not None and not textured:
        parts.append(_rows("v %.6f %.6f %.6f %.4f %.4f %.4f",
                           np.concatenate([mesh.verts, np.clip(mesh.vertex_colors, 0, 1)], 1)))
    else:
        parts.append(_rows("v %.6f %.6f %.6f", mesh.verts))
    if textured:
        parts.append(_rows("vt %.6f %.6f", mesh.uvs))
    parts.append(_rows("vn %.5f %.5f %.5f", normals))
    if textured:
        parts.append("usemtl material0\n")
    f = mesh.faces + 1  # OBJ indices are 1-based; one index per vertex for position, UV and normal alike
    if textured:
        parts.append(_rows("f %d/%d/%d %d/%d/%d %d/%d/%d", np.repeat(f, 3, axis=1)))
    else:
        parts.append(_rows("f %d//%d %d//%d %d//%d", np.repeat(f, 2, axis=1)))
    path.write_text("".join(parts))
    return path


def export_obj(model, path, export_cfg=None, background=None, device="cpu", **_) -> Path:
    """Exporter ``obj``: representation → textured mesh → ``path`` (OBJ + MTL + PNGs), plus a preview rendered from
    the written OBJ when ``export.mesh_preview`` is set."""
    from ..representations import canonical_scene
    from .bake import textured_mesh
    from .gltf import check_origin

    origin = check_origin(export_cfg)
    model = canonical_scene(model)  # 4D: OBJ has no animation; the surface at the canonical time τ_c
    path = write_obj(textured_mesh(model, export_cfg), path, origin=origin)
    if export_cfg is None or getattr(export_cfg, "mesh_preview", True):
        from .mesh import write_preview

        write_preview(path, export_cfg, background, turntable=False)  # the GLB exporter writes the video
    return path
