"""A plain triangle mesh with optional colours, UVs and PBR textures: what every mesh exporter takes.

Conventions: world +Y up, metres, counter-clockwise faces seen from outside (right-hand normals point out).
``uvs`` follow the OpenGL / OBJ / trimesh convention: (0, 0) is the bottom-left corner of the texture image, while
the texture arrays are stored row 0 = top (as images are). glTF's UV origin is the top-left corner, so
:mod:`dreamkit.export.gltf` writes ``(u, 1 − v)``.

Also here: rendering a mesh (vertex colours or a base-colour texture sampled per pixel) with the project rasterizer,
and loading an exported GLB / OBJ back through trimesh, so previews show what a viewer will load.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["Mesh", "vertex_normals", "apply_origin", "render_mesh", "load_mesh_file"]


@dataclass
class Mesh:
    """Triangle mesh (numpy arrays; export is offline work).

    Attributes:
        verts: [V, 3] float32 positions.
        faces: [F, 3] int64 vertex indices, counter-clockwise seen from outside.
        normals: [V, 3] unit vertex normals, or None (computed on demand by :meth:`with_normals`).
        vertex_colors: [V, 3] float32 linear-ish RGB in [0, 1], or None.
        uvs: [V, 2] float32 texture coordinates (OpenGL convention, v up), or None.
        base_color: [H, W, 3] float32 in [0, 1] (sRGB as glTF's baseColorTexture), or None.
        orm: [H, W, 3] float32: R occlusion, G roughness, B metallic (glTF's packing), or None.
        normal_map: [H, W, 3] float32 tangent-space normals encoded as 0.5·n + 0.5, or None.
        roughness, metallic: material factors used when ``orm`` is None (glTF multiplies them with the texture,
            so with a texture the writers set both factors to 1).
        unlit: the colours already hold the lighting (they are what the fit's renders showed): viewers should show
            them as they are, not light them again (GLB: ``KHR_materials_unlit``; MTL: ``illum 0``).
    """

    verts: np.ndarray
    faces: np.ndarray
    normals: Optional[np.ndarray] = None
    vertex_colors: Optional[np.ndarray] = None
    uvs: Optional[np.ndarray] = None
    base_color: Optional[np.ndarray] = None
    orm: Optional[np.ndarray] = None
    normal_map: Optional[np.ndarray] = None
    roughness: float = 0.9
    metallic: float = 0.0
    unlit: bool = False
    name: str = field(default="mesh")

    def __post_init__(self) -> None:
        self.verts = np.ascontiguousarray(self.verts, dtype=np.float32).reshape(-1, 3)
        self.faces = np.ascontiguousarray(self.faces, dtype=np.int64).reshape(-1, 3)
        for attr, width in (("normals", 3), ("vertex_colors", 3), ("uvs", 2)):
            value = getattr(self, attr)
            if value is not None:
                value = np.ascontiguousarray(value, dtype=np.float32)
                if value.shape != (len(self.verts), width):
                    raise ValueError(f"Mesh.{attr} must be [{len(self.verts)}, {width}], got {value.shape}")
                setattr(self, attr, value)

    @property
    def num_verts(self) -> int:
        return len(self.verts)

    @property
    def num_faces(self) -> int:
        return len(self.faces)

    @property
    def bounds(self) -> np.ndarray:
        """[2, 3] axis-aligned bounding box (min, max)."""
        return np.stack([self.verts.min(0), self.verts.max(0)])

    def copy(self, **changes) -> "Mesh":
        return replace(self, **changes)

    def with_normals(self) -> "Mesh":
        """A copy with area-weighted vertex normals recomputed from the faces."""
        return self.copy(normals=vertex_normals(self.verts, self.faces))


def vertex_normals(verts: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """[V, 3] unit normals: the sum of the (area-weighted) normals of the faces around each vertex."""
    v = verts.astype(np.float64)
    tri = v[faces]
    face_n = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])  # length = 2·area
    normals = np.zeros_like(v)
    for corner in range(3):
        np.add.at(normals, faces[:, corner], face_n)
    length = np.linalg.norm(normals, axis=1, keepdims=True)
    # Isolated vertices (no face) get +Y so that every normal is a unit vector, as glTF requires.
    normals = np.where(length > 1e-20, normals / np.maximum(length, 1e-20), np.array([0.0, 1.0, 0.0]))
    return normals.astype(np.float32)


def apply_origin(mesh: Mesh, origin: str) -> Mesh:
    """Translate so the bounding box is centred at the origin (``"centre"``), or centred in X/Z with its bottom at
    y = 0 (``"base"``, for placing assets on a floor in an engine), or unchanged (``"keep"``)."""
    if origin == "keep":
        return mesh
    lo, hi = mesh.bounds
    shift = -(lo + hi) / 2
    if origin == "base":
        shift[1] = -lo[1]
    elif origin not in ("centre", "center"):
        raise ValueError(f"origin={origin!r} — use centre, base or keep")
    return mesh.copy(verts=mesh.verts + shift.astype(np.float32))


def sample_texture(texture: torch.Tensor, uvs: torch.Tensor) -> torch.Tensor:
    """Bilinear lookup: texture [H, W, C], uvs [N, 2] (OpenGL convention, v up) → [N, C]."""
    grid = torch.stack([uvs[:, 0] * 2 - 1, 1 - uvs[:, 1] * 2], -1)  # grid_sample: y = −1 is the top row
    out = F.grid_sample(texture.permute(2, 0, 1)[None], grid[None, None], mode="bilinear",
                        padding_mode="border", align_corners=False)
    return out[0, :, 0].T


@torch.no_grad()
def render_mesh(mesh: Mesh, cameras, background: Sequence[float] = (1.0, 1.0, 1.0), ssaa: int = 1,
                light_dir_world: Sequence[float] = (0.4, 0.8, 0.45), ambient: Optional[float] = None,
                diffuse: Optional[float] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Render ``mesh`` with the shading of :func:`dreamkit.render.raster.render_mesh_colors` (two-sided Lambert,
    fixed world light: ambient 0.35, diffuse 0.65), or unlit (ambient 1, diffuse 0) when ``mesh.unlit`` — as a
    viewer shows a ``KHR_materials_unlit`` material; explicit ``ambient``/``diffuse`` override both. Colour from the
    base-colour texture sampled per pixel at the interpolated UVs when the mesh has one, else from vertex colours,
    else grey.

    Returns rgb [B, H, W, 3] and alpha [B, H, W, 1] (coverage).
    """
    if ambient is None:
        ambient = 1.0 if mesh.unlit else 0.35
    if diffuse is None:
        diffuse = 0.0 if mesh.unlit else 0.65
    from ..render.raster import face_normals, rasterize_mesh

    W, H = cameras.width, cameras.height
    cams = cameras.with_resolution(W * ssaa, H * ssaa) if ssaa > 1 else cameras
    verts = torch.as_tensor(mesh.verts, dtype=torch.float32)
    faces = torch.as_tensor(mesh.faces, dtype=torch.long)
    frags = rasterize_mesh(verts, faces, cams.viewmats, cams.K, cams.width, cams.height)
    fid = frags.face_id.view(-1)[frags.visible]
    bary = frags.visible_bary.float()

    def per_pixel(attr: np.ndarray) -> torch.Tensor:  # [V, C] → [M, C] at the visible pixels
        corners = torch.as_tensor(attr, dtype=torch.float32)[faces[fid]]  # [M, 3, C]
        return (bary[..., None] * corners).sum(1)

    if mesh.uvs is not None and mesh.base_color is not None:
        color = sample_texture(torch.as_tensor(mesh.base_color, dtype=torch.float32), per_pixel(mesh.uvs))
    elif mesh.vertex_colors is not None:
        color = per_pixel(mesh.vertex_colors)
    else:
        color = torch.full((len(fid), 3), 0.7)
    light = F.normalize(torch.as_tensor(light_dir_world, dtype=torch.float32), dim=0)
    shade = ambient + diffuse * (face_normals(verts, faces) @ light).abs()
    rgb_vis = color * shade[fid][:, None]
    B = len(cameras)
    n_pix = B * cams.height * cams.width
    bg = torch.as_tensor(background, dtype=torch.float32)
    rgb = bg.expand(n_pix, 3).contiguous().index_put((frags.visible,), rgb_vis).view(B, cams.height, cams.width, 3)
    alpha = frags.mask.float()[..., None]
    if ssaa > 1:
        rgb = F.avg_pool2d(rgb.permute(0, 3, 1, 2), ssaa).permute(0, 2, 3, 1)
        alpha = F.avg_pool2d(alpha.permute(0, 3, 1, 2), ssaa).permute(0, 2, 3, 1)
    return rgb, alpha


def file_is_unlit(path: str | Path, loaded=None) -> bool:
    """Whether a mesh file asks viewers not to light its colours: a glTF material with ``KHR_materials_unlit`` (read
    with pygltflib), or an OBJ whose MTL material has ``illum 0`` ("colour on, ambient off": Kd as it is; read with
    trimesh's MTL parser — ``loaded``, the file as trimesh already loaded it, saves a second read)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in (".glb", ".gltf"):
        import pygltflib

        gltf = pygltflib.GLTF2().load(str(path))
        return any("KHR_materials_unlit" in (m.extensions or {}) for m in gltf.materials or [])
    if suffix == ".obj":
        import trimesh

        if loaded is None:
            loaded = trimesh.load(str(path), process=False)
        geoms = list(loaded.dump()) if isinstance(loaded, trimesh.Scene) else [loaded]
        for geom in geoms:
            kwargs = getattr(getattr(geom.visual, "material", None), "kwargs", None) or {}
            illum = kwargs.get("illum")
            if illum is not None and str(illum[0] if isinstance(illum, (list, tuple)) else illum).strip() == "0":
                return True
    return False


def load_mesh_file(path: str | Path) -> Mesh:
    """Read a GLB / glTF / OBJ (one textured or coloured mesh, scenes are flattened) with trimesh — a reader we did
    not write — into a :class:`Mesh`; the base-colour texture is read from the PBR (or OBJ) material, and ``unlit``
    from the material (:func:`file_is_unlit`)."""
    import trimesh

    loaded = trimesh.load(str(path), process=False)
    unlit = file_is_unlit(path, loaded)
    if isinstance(loaded, trimesh.Scene):
        geoms = list(loaded.dump())
        if len(geoms) != 1:
            loaded = trimesh.util.concatenate(geoms)
        else:
            loaded = geoms[0]
    verts = np.asarray(loaded.vertices, dtype=np.float32)
    faces = np.asarray(loaded.faces, dtype=np.int64)
    kw: dict = {}
    visual = loaded.visual
    if visual is not None and visual.kind == "texture" and getattr(visual, "uv", None) is not None:
        kw["uvs"] = np.asarray(visual.uv, dtype=np.float32)
        material = visual.material
        image = getattr(material, "baseColorTexture", None)
        if image is None:
            image = getattr(material, "image", None)
        if image is not None:
            kw["base_color"] = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
        mr = getattr(material, "metallicRoughnessTexture", None)
        if mr is not None:
            orm = np.asarray(mr.convert("RGB"), dtype=np.float32) / 255.0
            occ = getattr(material, "occlusionTexture", None)
            orm[..., 0] = (np.asarray(occ.convert("RGB"), dtype=np.float32)[..., 0] / 255.0 if occ is not None
                           else 1.0)
            kw["orm"] = orm
    elif visual is not None and visual.kind == "vertex":
        kw["vertex_colors"] = np.asarray(visual.vertex_colors, dtype=np.float32)[:, :3] / 255.0
    elif visual is not None and visual.kind == "face":
        fc = np.asarray(visual.face_colors, dtype=np.float32)[:, :3] / 255.0
        verts, faces = verts[faces].reshape(-1, 3), np.arange(len(faces) * 3).reshape(-1, 3)
        kw["vertex_colors"] = np.repeat(fc, 3, axis=0)
    return Mesh(verts=verts, faces=faces, unlit=unlit, **kw)


def write_preview(path: str | Path, export_cfg=None, background=None, turntable: bool = True) -> list[Path]:
    """Render an exported mesh file (GLB / OBJ, loaded back with trimesh) on an orbit around its bounding-box
    centre: ``<stem>_<format>_preview.png`` (8 views) and, with ``turntable``, ``<stem>_<format>_turntable.mp4``
    (e.g. ``mesh_glb_preview.png``), so the previews of ``mesh.glb`` and ``mesh.obj`` do not collide. What viewers load
    is what the preview shows, so it is a check of the file, not of the representation. Returns the written paths.
    """
    from ..cameras import cameras_from_spherical
    from ..imageio_utils import save_image_grid, write_video

    def opt(name, default):
        return default if export_cfg is None else getattr(export_cfg, name, default)

    path = Path(path)
    mesh = load_mesh_file(path)
    frames = int(opt("turntable_frames", 48))
    res = int(opt("turntable_resolution", 128))
    centre = torch.as_tensor(mesh.bounds.mean(0), dtype=torch.float32)
    az = torch.arange(frames, dtype=torch.float32) * (360.0 / frames)
    full = lambda v: torch.full((frames,), float(v))  # noqa: E731
    cams = cameras_from_spherical(full(opt("turntable_elevation", 15.0)), az, full(opt("turntable_distance", 2.75)),
                                  full(opt("turntable_fovy", 40.0)), res, res, target=centre.expand(frames, 3))
    bg = (1.0, 1.0, 1.0) if background is None else torch.as_tensor(background, dtype=torch.float32).reshape(-1)[:3]
    images = torch.cat([render_mesh(mesh, cams[i:i + 8], background=bg)[0] for i in range(0, frames, 8)])
    stem = f"{path.with_suffix('')}_{path.suffix.lstrip('.').lower()}"
    written = []
    step = max(1, frames // 8)
    written.append(save_image_grid(images[::step][:8], Path(f"{stem}_preview.png"), columns=4))
    if turntable:
        written.append(write_video(images, Path(f"{stem}_turntable.mp4"), fps=int(opt("turntable_fps", 24))))
    return written
