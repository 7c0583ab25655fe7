"""Triangle rasterization in pure PyTorch: the torch twin of a later CUDA kernel.

The API follows nvdiffrast's split (Laine et al. 2020, "Modular Primitives for High-Performance Differentiable
Rendering"): :func:`rasterize_mesh` finds which triangle covers each pixel and where (barycentrics, depth);
:func:`interpolate` turns per-vertex (or per-face-corner) attributes into per-pixel values. Shading is plain
tensor code on top (:func:`render_mesh_colors`).

Conventions (see :mod:`dreamkit.cameras`): world +Y up, OpenCV camera axes (x right, y down, z forward), pixel
``(x, y)`` spans ``[x, x+1) × [y, y+1)`` and is sampled at its centre ``(x + 0.5, y + 0.5)``. Images are channels
last, ``[B, H, W, C]``, as gsplat.

Gradients. Visibility (which face wins a pixel) is found without gradients. The barycentrics and depth of visible
pixels are then recomputed with autograd from the vertex positions, so gradients w.r.t. vertex positions flow
through *interior* pixels (a pixel's attribute moves when the triangle under it moves). Gradients caused by
visibility changes at silhouettes and occlusion boundaries are not captured here; they need the analytic
antialiasing step (nvdiffrast's ``antialias``) of a later issue.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from ..cameras import Cameras

__all__ = ["Fragments", "rasterize_mesh", "interpolate", "face_normals", "render_mesh_colors"]

# Screen coordinates are snapped to 1/256 px and edge functions evaluated in float64: with vertex coordinates on a
# fixed-point grid the edge functions are exact (products of ~22-bit numbers fit float64's 53-bit mantissa), so two
# triangles sharing an edge agree on every pixel and the mesh rasterizes without cracks (a watertight rasterizer
# in the sense of fixed-point GPU rasterizers). Exactness holds for |u|, |v| < 2^14 px.
_SUBPIXEL = 256.0
_INT64_MAX = torch.iinfo(torch.int64).max


@dataclass
class Fragments:
    """The result of :func:`rasterize_mesh` for B cameras at H×W pixels.

    Attributes:
        face_id: [B, H, W] long, index of the visible face, -1 where no face covers the pixel centre.
        bary: [B, H, W, 3] perspective-correct barycentrics of the visible face (zeros where empty);
            differentiable w.r.t. the vertex positions.
        depth: [B, H, W] camera-space z of the visible surface (0 where empty); differentiable w.r.t. the vertices.
        visible: [M] long, flat indices ``b·H·W + y·W + x`` of the M covered pixels.
        visible_bary: [M, 3] the barycentrics of the covered pixels (the same values as ``bary``, gathered).
        faces: [F, 3] long, the faces that were rasterized (for :func:`interpolate`).
    """

    face_id: torch.Tensor
    bary: torch.Tensor
    depth: torch.Tensor
    visible: torch.Tensor
    visible_bary: torch.Tensor
    faces: torch.Tensor

    @property
    def mask(self) -> torch.Tensor:
        """[B, H, W] bool, True where a face covers the pixel."""
        return self.face_id >= 0


def _to_camera(verts: torch.Tensor, viewmats: torch.Tensor) -> torch.Tensor:
    """verts [V, 3] world, viewmats [B, 4, 4] → [B, V, 3] camera coordinates."""
    return torch.matmul(verts, viewmats[:, :3, :3].transpose(-1, -2)) + viewmats[:, None, :3, 3]


def _project(cam: torch.Tensor, Ks: torch.Tensor) -> torch.Tensor:
    """cam [B, V, 3] camera coordinates, Ks [B, 3, 3] → [B, V, 2] pixel coordinates."""
    uvw = torch.matmul(cam, Ks.transpose(-1, -2))
    return uvw[..., :2] / uvw[..., 2:3]


def _edge_coefficients(tri: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Screen triangles tri [N, 3, 2] → (A, B, C) [N, 3] and twice the signed area [N].

    Edge function i is opposite vertex i: e_i(p) = A_i·p.x + B_i·p.y + C_i, and the screen-space barycentric is
    λ_i = e_i / area (Pineda 1988, "A parallel algorithm for polygon rasterization").
    """
    a, b, c = tri[:, 0], tri[:, 1], tri[:, 2]
    starts = torch.stack([b, c, a], dim=1)  # edge i runs start → end, opposite vertex i
    ends = torch.stack([c, a, b], dim=1)
    d = ends - starts
    A = -d[..., 1]
    B = d[..., 0]
    C = d[..., 1] * starts[..., 0] - d[..., 0] * starts[..., 1]
    area = (b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (b[:, 1] - a[:, 1]) * (c[:, 0] - a[:, 0])
    return A, B, C, area


# Rows of the per-face table of the visibility pass (float64; every value in it is exact in float64).
_E0, _A, _B, _WZ = slice(0, 3), slice(3, 6), slice(6, 9), slice(9, 12)
_NX, _FIRST, _BASE, _FACE = 12, 13, 14, 15


@torch.no_grad()
def _visibility(verts: torch.Tensor, faces: torch.Tensor, viewmats: torch.Tensor, Ks: torch.Tensor, width: int,
                height: int, near: float, max_pairs: int, cull_backfaces: bool) -> torch.Tensor:
    """The z-buffer pass: [B·H·W] int64 keys ``depth_bits << 32 | face`` (INT64_MAX where empty)."""
    B = viewmats.shape[0]
    n_faces = faces.shape[0]
    device = verts.device
    cam = _to_camera(verts.double(), viewmats.double())  # [B, V, 3]
    uv = _project(cam, Ks.double())  # [B, V, 2]
    z = cam[..., 2]
    # Keep the projection finite for vertices behind the camera; their faces are dropped below anyway.
    uv = torch.where((z > near)[..., None], uv, torch.zeros_like(uv))
    uv = torch.round(uv * _SUBPIXEL) / _SUBPIXEL

    tri = uv[:, faces].reshape(B * n_faces, 3, 2)  # [B·F, 3, 2]
    tri_z = z[:, faces].reshape(B * n_faces, 3)
    A, Bc, C, area = _edge_coefficients(tri)
    # Faces crossing the near plane are dropped whole (no clipping): fine for objects in front of the camera.
    valid = (tri_z > near).all(-1) & (area != 0)
    if cull_backfaces:
        corners = cam[:, faces].reshape(B * n_faces, 3, 3)
        normal = torch.linalg.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0], dim=-1)
        valid &= (normal * corners[:, 0]).sum(-1) < 0  # the face's front side looks at the camera centre

    # Pixel ranges of each face's bounding box: pixel x is inside when x + 0.5 ∈ [min u, max u]. Clamp before
    # rounding so that huge coordinates (faces grazing the near plane) stay representable.
    size = torch.tensor([width, height], dtype=tri.dtype, device=device)
    lo = torch.ceil(torch.minimum((tri.amin(1) - 0.5).clamp(min=-1), size + 1)).clamp(min=0)
    hi = torch.minimum(torch.floor(torch.minimum((tri.amax(1) - 0.5).clamp(min=-1), size + 1)), size - 1)
    extent = (hi - lo + 1).clamp(min=0)
    counts = torch.where(valid, extent[:, 0] * extent[:, 1], torch.zeros_like(extent[:, 0])).long()

    keys = torch.full((B * height * width,), _INT64_MAX, dtype=torch.int64, device=device)
    candidates = torch.nonzero(counts).squeeze(1)  # flat b·F + f of faces touching the image
    if candidates.numel() == 0:
        return keys
    cand_counts = counts[candidates]
    first = torch.cumsum(cand_counts, 0) - cand_counts  # index of each face's first (face, pixel) pair

    # One column per candidate face, so that each (face, pixel) pair needs a single gather and each quantity is a
    # contiguous row afterwards. The area's sign is folded into the edge coefficients so that "inside" is all three
    # edge functions ≥ 0 whatever the winding (two-sided).
    flat = candidates
    sign = torch.sign(area[flat])[:, None]
    A, Bc, C = A[flat] * sign, Bc[flat] * sign, C[flat] * sign
    origin = lo[flat] + 0.5  # centre of the bounding box's first pixel
    b = torch.div(flat, n_faces, rounding_mode="floor")
    table = torch.cat([
        A * origin[:, :1] + Bc * origin[:, 1:] + C, A, Bc,  # e_i at the origin pixel, then its x and y steps
        # Perspective-correct depth: 1/z is affine in screen space, 1/z(p) = Σ_i e_i(p) / (|area|·z_i).
        1.0 / (tri_z[flat] * area[flat].abs()[:, None]),
        extent[flat, :1], first[:, None].double(),
        (b * (height * width)).double()[:, None] + lo[flat, 1:] * width + lo[flat, :1],
        (flat - b * n_faces).double()[:, None],
    ], dim=1).T.contiguous()  # [16, n_candidates]

    # Chunks of consecutive candidate faces holding about max_pairs (face, pixel) pairs each (a face with more
    # pairs than that forms its own chunk): memory stays bounded whatever the mesh.
    chunk_of_face = torch.div(first, max_pairs, rounding_mode="floor")
    boundaries = torch.nonzero(torch.diff(chunk_of_face)).squeeze(1) + 1
    edges = [0] + boundaries.tolist() + [candidates.numel()]
    for start, stop in zip(edges[:-1], edges[1:]):
        n_pairs = cand_counts[start:stop]
        # Enumerate (face, pixel) pairs: each face column repeated once per pixel of its bounding box.
        cols = torch.repeat_interleave(table[:, start:stop], n_pairs, dim=1)  # [16, P]
        offset = int(first[start])
        local = torch.arange(offset, offset + cols.shape[1], device=device, dtype=torch.float64) - cols[_FIRST]
        nx = cols[_NX]
        dy = torch.floor((local + 0.5) / nx)
        dx = local - dy * nx
        e = cols[_E0] + cols[_A] * dx + cols[_B] * dy  # [3, P] edge functions at the pixel centres
        inside = (e[0] >= 0) & (e[1] >= 0) & (e[2] >= 0)
        depth = (1.0 / (e * cols[_WZ]).sum(0)).float()
        # Positive float32 bit patterns order like the floats, so one int64 amin is a z-test with a deterministic
        # tie-break (smallest face index wins among equal depths).
        key = (depth.view(torch.int32).long() << 32) | cols[_FACE].long()
        key = torch.where(inside, key, _INT64_MAX)
        pixel = (cols[_BASE] + dy * width + dx).long()
        keys.scatter_reduce_(0, pixel, key, reduce="amin")
    return keys


def rasterize_mesh(
    verts: torch.Tensor,
    faces: torch.Tensor,
    viewmats: torch.Tensor,
    Ks: torch.Tensor,
    width: int,
    height: int,
    near: float = 0.01,
    cull_backfaces: bool = False,
    max_pairs: int = 1 << 18,
) -> Fragments:
    """Rasterize a triangle mesh for B pinhole cameras (two-sided: no back-face culling).

    Args:
        verts: [V, 3] world positions (float); may require grad.
        faces: [F, 3] long vertex indices.
        viewmats: [B, 4, 4] world-to-camera, OpenCV axes (``Cameras.viewmats``).
        Ks: [B, 3, 3] pixel intrinsics.
        width, height: image size in pixels.
        near: faces with a vertex at camera z ≤ ``near`` are dropped (no near-plane clipping).
        cull_backfaces: drop faces whose front side (counter-clockwise winding, right-hand normal) looks away from
            the camera; about halves the work for closed, consistently wound meshes. Off by default (two-sided).
        max_pairs: bound on (face, pixel) candidate pairs processed at once (about 250 bytes per pair).

    Returns:
        :class:`Fragments` with ``face_id`` [B, H, W], ``bary`` [B, H, W, 3] and ``depth`` [B, H, W]; ``bary`` and
        ``depth`` carry gradients to ``verts`` through the visible pixels (see the module docstring).

    Algorithm: per-face pixel bounding boxes → (face, pixel) candidate pairs → edge-function inside test at pixel
    centres → z-buffer by ``scatter_reduce(amin)`` on packed (depth, face) keys; then the barycentrics of the
    winning faces are recomputed with autograd. No Python loop over faces or pixels, only over chunks of pairs.
    """
    if verts.ndim != 2 or verts.shape[-1] != 3:
        raise ValueError(f"verts must be [V, 3], got {tuple(verts.shape)}")
    if faces.ndim != 2 or faces.shape[-1] != 3:
        raise ValueError(f"faces must be [F, 3], got {tuple(faces.shape)}")
    faces = faces.long()
    B = viewmats.shape[0]
    keys = _visibility(verts.detach(), faces, viewmats.detach(), Ks.detach(), width, height, near, max_pairs,
                       cull_backfaces)

    visible = torch.nonzero(keys != _INT64_MAX).squeeze(1)  # [M]
    face_of_visible = keys[visible] & 0xFFFFFFFF
    face_id = torch.full((B * height * width,), -1, dtype=torch.long, device=verts.device)
    face_id[visible] = face_of_visible

    bary_vis, depth_vis = _visible_barycentrics(verts, faces, viewmats, Ks, width, height, visible, face_of_visible)
    dtype = bary_vis.dtype
    bary = torch.zeros(B * height * width, 3, dtype=dtype, device=verts.device).index_put((visible,), bary_vis)
    depth = torch.zeros(B * height * width, dtype=dtype, device=verts.device).index_put((visible,), depth_vis)
    return Fragments(
        face_id=face_id.view(B, height, width),
        bary=bary.view(B, height, width, 3),
        depth=depth.view(B, height, width),
        visible=visible,
        visible_bary=bary_vis,
        faces=faces,
    )


def _visible_barycentrics(verts, faces, viewmats, Ks, width, height, visible, face_of_visible):
    """Differentiable perspective-correct barycentrics [M, 3] and depth [M] of the M visible pixels."""
    hw = height * width
    b = torch.div(visible, hw, rounding_mode="floor")
    rem = visible - b * hw
    py = torch.div(rem, width, rounding_mode="floor")
    px = rem - py * width
    dtype = verts.dtype if verts.dtype in (torch.float32, torch.float64) else torch.float32
    cam = _to_camera(verts.to(dtype), viewmats.to(dtype))  # [B, V, 3]
    uvz = torch.cat([_project(cam, Ks.to(dtype)), cam[..., 2:]], -1).reshape(-1, 3)  # [B·V, 3]
    corner = (b * verts.shape[0])[:, None] + faces.index_select(0, face_of_visible)  # [M, 3] rows of uvz
    tri = uvz.index_select(0, corner.reshape(-1)).view(-1, 3, 3)  # [M, 3 corners, (u, v, z)]
    A, Bc, C, area = _edge_coefficients(tri[..., :2])
    p = torch.stack([px, py], -1).to(dtype) + 0.5
    lam = (A * p[:, :1] + Bc * p[:, 1:] + C) / area[:, None]  # screen-space barycentrics
    # Perspective correction: b_i = (λ_i / z_i) / Σ_j (λ_j / z_j), depth = 1 / Σ_j (λ_j / z_j).
    q = lam / tri[..., 2]
    inv_depth = q.sum(-1, keepdim=True)
    return q / inv_depth, 1.0 / inv_depth.squeeze(-1)


def interpolate(attr: torch.Tensor, fragments: Fragments, faces: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Interpolate attributes over the visible faces (nvdiffrast's ``interpolate``).

    Args:
        attr: [V, C] per-vertex attributes (indexed by ``faces``), or [F, 3, C] face-varying attributes (one value
            per face corner, e.g. flat colours or UVs with seams).
        fragments: the output of :func:`rasterize_mesh`.
        faces: [F, 3]; defaults to the faces that were rasterized.

    Returns:
        [B, H, W, C], zeros where no face is visible. Differentiable w.r.t. ``attr`` and, through the barycentrics,
        w.r.t. the vertex positions given to :func:`rasterize_mesh`.
    """
    faces = fragments.faces if faces is None else faces.long()
    B, H, W = fragments.face_id.shape
    fid = fragments.face_id.view(-1)[fragments.visible]
    if attr.ndim == 2:
        values = attr.index_select(0, faces.index_select(0, fid).reshape(-1)).view(-1, 3, attr.shape[-1])
    elif attr.ndim == 3 and attr.shape[1] == 3:
        values = attr.index_select(0, fid)
    else:
        raise ValueError(f"attr must be [V, C] or [F, 3, C], got {tuple(attr.shape)}")
    bary = fragments.visible_bary.to(values.dtype)
    out_vis = (bary[..., None] * values).sum(1)  # [M, C]
    out = torch.zeros(B * H * W, attr.shape[-1], dtype=out_vis.dtype, device=attr.device)
    return out.index_put((fragments.visible,), out_vis).view(B, H, W, -1)


def face_normals(verts: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """[F, 3] unit normals (right-hand rule over the face's vertex order)."""
    v = verts[faces.long()]
    return F.normalize(torch.linalg.cross(v[:, 1] - v[:, 0], v[:, 2] - v[:, 0], dim=-1), dim=-1, eps=1e-12)


def render_mesh_colors(
    verts: torch.Tensor,
    faces: torch.Tensor,
    cameras: Cameras,
    face_colors: Optional[torch.Tensor] = None,
    vertex_colors: Optional[torch.Tensor] = None,
    background: Sequence[float] | torch.Tensor = (1.0, 1.0, 1.0),
    light_dir_world: Sequence[float] = (0.4, 0.8, 0.45),
    ambient: float = 0.35,
    diffuse: float = 0.65,
    ssaa: int = 1,
    near: float = 0.01,
    cull_backfaces: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Render a coloured mesh with two-sided Lambertian shading under a fixed world-space directional light.

    The shade ``ambient + diffuse·|n·l|`` uses face normals and a light fixed in the world, so it does not depend on
    the viewpoint: a view-independent representation (3D Gaussians with DC colour only) can reproduce the renders
    exactly. ``ssaa`` > 1 renders at ``ssaa``× the resolution and average-pools, which gives smooth (antialiased)
    edges for targets.

    Args:
        verts: [V, 3] world positions; faces: [F, 3] long.
        cameras: B cameras; the image size is ``cameras.width × cameras.height``.
        face_colors: [F, 3] in [0, 1] (flat colours), or
        vertex_colors: [V, 3] in [0, 1] (interpolated). Exactly one of the two.
        background: [3] colour composited where no face is visible.
        light_dir_world: direction towards the light (normalised here).
        ambient, diffuse: shading weights (their sum is the brightest shade).
        ssaa: supersampling factor (1 = none).
        near, cull_backfaces: see :func:`rasterize_mesh`.

    Returns:
        rgb [B, H, W, 3], alpha [B, H, W, 1] (coverage fraction), depth [B, H, W, 1] (camera z averaged over the
        covered sub-samples, 0 where empty).
    """
    if (face_colors is None) == (vertex_colors is None):
        raise ValueError("give exactly one of face_colors [F, 3] or vertex_colors [V, 3]")
    faces = faces.long()
    W, H = cameras.width, cameras.height
    cams = cameras.with_resolution(W * ssaa, H * ssaa) if ssaa > 1 else cameras
    frags = rasterize_mesh(verts, faces, cams.viewmats, cams.K, cams.width, cams.height, near=near,
                           cull_backfaces=cull_backfaces)
    B = len(cameras)
    fid = frags.face_id.view(-1)[frags.visible]

    light = F.normalize(torch.as_tensor(light_dir_world, dtype=verts.dtype, device=verts.device), dim=0)
    shade = ambient + diffuse * (face_normals(verts, faces) @ light).abs()  # [F]
    if face_colors is not None:
        color_vis = face_colors.index_select(0, fid)
    else:
        corners = vertex_colors.index_select(0, faces.index_select(0, fid).reshape(-1)).view(-1, 3, 3)
        color_vis = (frags.visible_bary.to(vertex_colors.dtype)[..., None] * corners).sum(1)
    rgb_vis = color_vis * shade.index_select(0, fid)[:, None].to(color_vis.dtype)

    bg = torch.as_tensor(background, dtype=rgb_vis.dtype, device=verts.device)
    n_pix = B * cams.height * cams.width
    rgb = bg.expand(n_pix, 3).contiguous().index_put((frags.visible,), rgb_vis).view(B, cams.height, cams.width, 3)
    alpha = frags.mask.to(rgb.dtype)[..., None]
    depth = frags.depth.to(rgb.dtype)[..., None]
    if ssaa > 1:
        def pool(x):
            return F.avg_pool2d(x.permute(0, 3, 1, 2), ssaa).permute(0, 2, 3, 1)

        rgb = pool(rgb)
        alpha_sum = pool(alpha)
        depth = torch.where(alpha_sum > 0, pool(depth) / alpha_sum.clamp(min=1e-12), torch.zeros_like(alpha_sum))
        alpha = alpha_sum
    return rgb, alpha, depth
