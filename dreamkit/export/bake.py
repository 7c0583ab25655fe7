"""Texture baking: rasterize the mesh in UV space, evaluate a colour at each texel's 3D point, pad the seams.

The UV-space rasterizer is the project's triangle rasterizer (:func:`dreamkit.render.raster.rasterize_mesh`) fed
with an identity camera and vertices at (u·W, (1−v)·H, 1): at constant depth its barycentrics are the affine ones,
and each texel centre gets the face covering it and its barycentrics, hence its 3D position on the surface.
"""
from __future__ import annotations

from typing import Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F

from .mesh import Mesh
from .uv import unwrap_uv

__all__ = ["rasterize_uv", "bake_texture", "pad_texture", "bake_mesh", "textured_mesh", "material_is_unlit"]

ColorFn = Callable[[torch.Tensor], torch.Tensor]  # points [N, 3] → RGB [N, 3] in [0, 1]


@torch.no_grad()
def rasterize_uv(uvs: np.ndarray, faces: np.ndarray, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Cover a size×size texture with the UV triangles.

    Returns face_id [H, W] long (−1 where no chart covers the texel centre) and bary [H, W, 3] float32 barycentrics
    of the texel centre in that face. Texel (x, y) (row 0 at the top) is centred at u = (x + ½)/W, v = 1 − (y + ½)/H.
    """
    from ..render.raster import rasterize_mesh

    uv = torch.as_tensor(uvs, dtype=torch.float64)
    screen = torch.stack([uv[:, 0] * size, (1 - uv[:, 1]) * size, torch.ones_like(uv[:, 0])], -1)
    eye = torch.eye(4, dtype=torch.float64)[None]
    K = torch.eye(3, dtype=torch.float64)[None]
    frags = rasterize_mesh(screen, torch.as_tensor(faces, dtype=torch.long), eye, K, size, size)
    return frags.face_id[0], frags.bary[0].float()


def pad_texture(texture: torch.Tensor, mask: torch.Tensor, pixels: int = 8) -> torch.Tensor:
    """Dilate the covered texels ``pixels`` times into the empty ones (each new texel = the mean of its covered
    3×3 neighbours), then fill what is still empty with the mean colour, so bilinear and mip-mapped lookups near
    chart borders do not pick up a background colour ("edge padding" / seam padding).

    texture [H, W, C], mask [H, W] bool → [H, W, C].
    """
    tex = texture.permute(2, 0, 1)[None].clone()
    filled = mask[None, None].to(tex.dtype)
    tex = tex * filled
    kernel = torch.ones(1, 1, 3, 3, dtype=tex.dtype)
    C = tex.shape[1]
    for _ in range(int(pixels)):
        weight = F.conv2d(filled, kernel, padding=1)
        total = F.conv2d(tex.view(C, 1, *tex.shape[2:]), kernel, padding=1).view_as(tex)
        grow = (filled == 0) & (weight > 0)
        if not bool(grow.any()):
            break
        tex = torch.where(grow, total / weight.clamp_min(1), tex)
        filled = torch.maximum(filled, grow.to(tex.dtype))
    if bool((filled > 0).any()):
        mean = (tex * filled).sum((2, 3), keepdim=True) / filled.sum()
        tex = torch.where(filled > 0, tex, mean.expand_as(tex))
    return tex[0].permute(1, 2, 0).contiguous()


@torch.no_grad()
def bake_texture(mesh: Mesh, size: int = 1024, color_fn: Optional[ColorFn] = None, padding: int = 8,
                 chunk: int = 1 << 18) -> tuple[np.ndarray, np.ndarray]:
    """Bake a base-colour texture for a mesh that has ``uvs``.

    The colour of each covered texel is ``color_fn`` at the texel's 3D surface point, or the mesh's vertex colours
    interpolated there when ``color_fn`` is None. Returns texture [size, size, 3] float32 in [0, 1] (seam-padded by
    ``padding`` texels) and the coverage mask [size, size] bool.
    """
    if mesh.uvs is None:
        raise ValueError("bake_texture needs a mesh with uvs (see dreamkit.export.uv.unwrap_uv)")
    face_id, bary = rasterize_uv(mesh.uvs, mesh.faces, size)
    mask = face_id >= 0
    fid = face_id[mask]
    b = bary[mask]
    faces = torch.as_tensor(mesh.faces, dtype=torch.long)[fid]  # [M, 3]

    def at_texels(attr: np.ndarray) -> torch.Tensor:
        a = torch.as_tensor(attr, dtype=torch.float32)
        return (b[..., None] * a[faces]).sum(1)

    if color_fn is not None:
        points = at_texels(mesh.verts)
        colors = torch.cat([color_fn(points[i:i + chunk]).float().cpu() for i in range(0, len(points), chunk)]) \
            if len(points) else torch.zeros(0, 3)
    elif mesh.vertex_colors is not None:
        colors = at_texels(mesh.vertex_colors)
    else:
        colors = torch.full((int(mask.sum()), 3), 0.7)
    texture = torch.zeros(size, size, 3)
    texture[mask] = colors.clamp(0, 1)
    texture = pad_texture(texture, mask, padding)
    return texture.numpy(), mask.numpy()


def bake_mesh(mesh: Mesh, texture_size: int = 1024, padding: int = 8, color_fn: Optional[ColorFn] = None,
              roughness: float = 0.9, metallic: float = 0.0, orm_fn: Optional[ColorFn] = None) -> Mesh:
    """UV-unwrap (xatlas) and bake: a copy of ``mesh`` with ``uvs``, a ``base_color`` texture and an ``orm``
    texture (occlusion, roughness, metallic: baked from ``orm_fn`` — a representation with a PBR material field —
    or constant ``roughness`` and ``metallic`` with occlusion 1; the material factors become 1 so the texture
    carries the values, as glTF multiplies factor and texture)."""
    if mesh.num_faces == 0:
        raise ValueError("cannot bake an empty mesh")
    unwrapped = mesh if mesh.uvs is not None else unwrap_uv(mesh, texture_size, padding=max(2, padding // 2))
    base_color, _ = bake_texture(unwrapped, texture_size, color_fn=color_fn, padding=padding)
    if orm_fn is not None:
        orm, _ = bake_texture(unwrapped, texture_size, color_fn=orm_fn, padding=padding)
    else:
        orm = np.empty((texture_size, texture_size, 3), dtype=np.float32)
        orm[..., 0] = 1.0
        orm[..., 1] = float(roughness)
        orm[..., 2] = float(metallic)
    return unwrapped.copy(base_color=base_color, orm=orm, roughness=1.0, metallic=1.0)


def textured_mesh(model, export_cfg=None) -> Mesh:
    """The exporters' pipeline: representation → :class:`Mesh` (its ``export_mesh`` or marching cubes on its
    density, :func:`dreamkit.export.extract.mesh_from_representation`) → xatlas UVs → baked base colour (from the
    representation's colour field where it has one, else the mesh's vertex colours) and ORM textures."""
    from .extract import mesh_from_representation

    def opt(name, default):
        return default if export_cfg is None else getattr(export_cfg, name, default)

    material = check_material(export_cfg)  # before the (slow) extraction
    key = (id(model), _mesh_settings(export_cfg), _fingerprint(model))
    if _LAST[0] is not None and _LAST[0][0] == key:  # `glb` then `obj` of one model: extract and bake once
        return _LAST[0][1]
    mesh, color_fn = mesh_from_representation(model, export_cfg)
    if len(mesh.faces) == 0:
        from ..errors import DreamkitError

        raise DreamkitError(
            f"nothing to export: {type(model).__name__}'s surface is empty (export.mesh_method="
            f"{opt('mesh_method', 'density')}, export.mesh_threshold={opt('mesh_threshold', 1.0)}) — the fit left no "
            "visible density (see its renders/); with mesh_method=density try a lower export.mesh_threshold")
    result = bake_mesh(mesh, texture_size=int(opt("texture_size", 1024)), padding=int(opt("texture_padding", 8)),
                     color_fn=color_fn, roughness=float(opt("mesh_roughness", 0.9)),
                     metallic=float(opt("mesh_metallic", 0.0)), orm_fn=getattr(model, "query_orm", None))
    result = result.copy(unlit=material_is_unlit(model, color_fn, material))
    _LAST[0] = (key, result)
    return result


MATERIALS = ("auto", "pbr", "unlit")


def check_material(export_cfg) -> str:
    from ..errors import ConfigError

    material = "auto" if export_cfg is None else str(getattr(export_cfg, "mesh_material", "auto"))
    if material not in MATERIALS:
        raise ConfigError(f"export.mesh_material={material!r} — use auto (unlit when the colours already hold the "
                          "lighting), pbr (lit metallic-roughness) or unlit")
    return material


def material_is_unlit(model, color_fn: Optional[ColorFn], material: str = "auto") -> bool:
    """``export.mesh_material`` resolved: ``auto`` marks the material unlit when the baked colours already hold the
    lighting, i.e. they were projected from the representation's renders (:class:`~.extract.RenderedColors`), or
    the representation says its colours do (``colors_hold_lighting``: Gaussians always, NeRF/triplane with
    ``shading=albedo``, meshes with no shaded training renders; True for a representation that does not say).
    Lighting them again in a viewer would shade them twice (darker, with the fit's light baked in as well)."""
    if material != "auto":
        return material == "unlit"
    from .extract import RenderedColors

    if isinstance(color_fn, RenderedColors):
        return True
    return bool(getattr(model, "colors_hold_lighting", True))


def _mesh_settings(export_cfg) -> tuple:
    """Every ``export.mesh_*`` and ``export.texture_*`` setting (OmegaConf node or namespace), for the cache key: a new
    mesh setting cannot be left out of it."""
    if export_cfg is None:
        return ()
    items = export_cfg.items() if hasattr(export_cfg, "items") else vars(export_cfg).items()
    return tuple(sorted((k, repr(v)) for k, v in items if k.startswith(("mesh_", "texture_"))))


_LAST: list = [None]  # ((model id, settings, parameter fingerprint), Mesh) of the last textured_mesh call


def _fingerprint(model) -> tuple:
    """Cheap identity of a model's current parameter values (sums and shapes), to detect a changed model."""
    params = getattr(model, "parameters", None)
    if params is None:
        return (id(model),)
    with torch.no_grad():
        return tuple((tuple(p.shape), float(p.detach().double().sum())) for p in params())
