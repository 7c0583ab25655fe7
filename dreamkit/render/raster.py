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
visibility changes at silhouettes and occlusion boundaries come from :func:`antialias` (nvdiffrast's analytic
antialiasing), which blends pixel pairs across silhouette edges by the edge's position and so is differentiable
w.r.t. the projected vertices (``render_mesh_colors(..., antialias=True)``).

Backends. The z-buffer pass has a pure-PyTorch twin (any device) and a CUDA kernel (``custom_ops/raster``, loaded by
:mod:`dreamkit.render.cuda_raster`) that packs the same (depth, face) keys; see :func:`rasterize_mesh`'s
``backend``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from ..cameras import Cameras

__all__ = ["Fragments", "MeshTopology", "rasterize_mesh", "interpolate", "antialias", "mesh_topology", "face_normals",
           "render_mesh_colors"]

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
def _face_table(verts: torch.Tensor, faces: torch.Tensor, viewmats: torch.Tensor, Ks: torch.Tensor, width: int,
                height: int, near: float, cull_backfaces: bool):
    """Set-up of the z-buffer pass, shared by the torch twin and the CUDA kernel.

    Returns ``(table, first, counts)``: ``table`` [16, N] float64 holds one column per candidate face (the rows
    ``_E0, _A, _B, _WZ, _NX, _FIRST, _BASE, _FACE``), ``first`` [N] int64 the index of each face's first (face, pixel)
    pair, ``counts`` [N] its number of pairs (the pixels of its bounding box); ``None`` when no face touches the
    image.
    """
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

    candidates = torch.nonzero(counts).squeeze(1)  # flat b·F + f of faces touching the image
    if candidates.numel() == 0:
        return None
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
    return table, first, cand_counts


@torch.no_grad()
def _zbuffer_torch(keys: torch.Tensor, table: torch.Tensor, first: torch.Tensor, cand_counts: torch.Tensor,
                   width: int, max_pairs: int) -> None:
    """The torch twin of the z-buffer kernel: fills ``keys`` in place (``scatter_reduce(amin)``)."""
    device = keys.device
    # Chunks of consecutive candidate faces holding about max_pairs (face, pixel) pairs each (a face with more
    # pairs than that forms its own chunk): memory stays bounded whatever the mesh.
    chunk_of_face = torch.div(first, max_pairs, rounding_mode="floor")
    boundaries = torch.nonzero(torch.diff(chunk_of_face)).squeeze(1) + 1
    edges = [0] + boundaries.tolist() + [first.numel()]
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
        # tie-break (smallest face index wins among equal depths). The CUDA kernel packs the same keys.
        key = (depth.view(torch.int32).long() << 32) | cols[_FACE].long()
        key = torch.where(inside, key, _INT64_MAX)
        pixel = (cols[_BASE] + dy * width + dx).long()
        keys.scatter_reduce_(0, pixel, key, reduce="amin")


@torch.no_grad()
def _visibility(verts: torch.Tensor, faces: torch.Tensor, viewmats: torch.Tensor, Ks: torch.Tensor, width: int,
                height: int, near: float, max_pairs: int, cull_backfaces: bool,
                backend: str = "torch") -> torch.Tensor:
    """The z-buffer pass: [B·H·W] int64 keys ``depth_bits << 32 | face`` (INT64_MAX where empty).

    ``backend`` is a resolved backend (``"torch"``, ``"cuda"`` or ``"nvdiffrast"``, see :func:`_resolve_backend`).
    """
    if backend == "nvdiffrast":
        return _visibility_nvdiffrast(verts, faces, viewmats, Ks, width, height, near, cull_backfaces)
    B = viewmats.shape[0]
    keys = torch.full((B * height * width,), _INT64_MAX, dtype=torch.int64, device=verts.device)
    setup = _face_table(verts, faces, viewmats, Ks, width, height, near, cull_backfaces)
    if setup is None:
        return keys
    table, first, cand_counts = setup
    if backend == "cuda":
        from . import cuda_raster

        cuda_raster.zbuffer(keys, table, first, int(cand_counts.sum()), width)
    else:
        _zbuffer_torch(keys, table, first, cand_counts, width, max_pairs)
    return keys


_NVDR_CONTEXTS: dict = {}


def _visibility_nvdiffrast(verts, faces, viewmats, Ks, width, height, near, cull_backfaces) -> torch.Tensor:
    """Visibility by nvdiffrast's CUDA rasterizer (Laine et al. 2020), as keys with the face in the low bits.

    Differences from the twin: nvdiffrast clips faces at the near plane instead of dropping them, breaks depth ties
    its own way, and cannot cull back faces per camera here. Untested on our machines (no GPU).
    """
    import nvdiffrast.torch as dr  # optional; only imported when asked for

    if cull_backfaces:
        raise ValueError("cull_backfaces=True is not supported by backend='nvdiffrast'; use 'torch' or 'cuda'")
    device = verts.device
    ctx = _NVDR_CONTEXTS.get(device)
    if ctx is None:
        ctx = _NVDR_CONTEXTS[device] = dr.RasterizeCudaContext(device=device)
    cam = _to_camera(verts.float(), viewmats.float())  # [B, V, 3]
    uv = _project(cam, Ks.float())
    z = cam[..., 2:3]
    # OpenGL clip space whose NDC y = -1 is image row 0 (nvdiffrast's first output row), with a far plane behind
    # the whole mesh.
    far = float(z.max().clamp(min=near)) * 2.0 + 1.0
    ndc = torch.cat([2.0 * uv[..., :1] / width - 1.0, 2.0 * uv[..., 1:] / height - 1.0], -1)
    z_clip = z * ((far + near) / (far - near)) - 2.0 * far * near / (far - near)
    clip = torch.cat([ndc * z, z_clip, z], -1).contiguous()
    rast, _ = dr.rasterize(ctx, clip, faces.int().contiguous(), resolution=[height, width])
    tri = rast[..., 3].round().long().reshape(-1) - 1  # nvdiffrast stores triangle id + 1, 0 = empty
    return torch.where(tri >= 0, tri, torch.full_like(tri, _INT64_MAX))


_BACKENDS = ("auto", "torch", "cuda", "nvdiffrast")


def _resolve_backend(backend: str, device: torch.device) -> str:
    """``"auto"`` → the CUDA kernel for CUDA tensors when it builds (else a one-time warning and the torch twin),
    the torch twin otherwise. ``"cuda"`` raises :class:`~dreamkit.render.cuda_raster.CudaOpUnavailable` with the
    reason and the fix when the kernel cannot be used."""
    if backend not in _BACKENDS:
        raise ValueError(f"backend must be one of {_BACKENDS}, got {backend!r}")
    if backend == "torch" or (backend == "auto" and device.type != "cuda"):
        return "torch"
    if backend == "nvdiffrast":
        if device.type != "cuda":
            raise ValueError("backend='nvdiffrast' needs CUDA tensors; use backend='torch' on the CPU")
        try:
            import nvdiffrast.torch  # noqa: F401
        except ImportError as err:
            raise ImportError(f"backend='nvdiffrast' needs nvdiffrast ({err}); install it from "
                              "https://github.com/NVlabs/nvdiffrast or use backend='cuda' / 'torch'") from err
        return "nvdiffrast"
    from . import cuda_raster

    if backend == "cuda":
        if device.type != "cuda":
            raise ValueError(f"backend='cuda' needs CUDA tensors, got tensors on {device}; use backend='torch'")
        cuda_raster.load()  # raises CudaOpUnavailable naming what is missing
        return "cuda"
    return "cuda" if cuda_raster.available(warn=True) else "torch"


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
    backend: str = "auto",
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
        max_pairs: bound on (face, pixel) candidate pairs processed at once (about 250 bytes per pair; torch twin).
        backend: who runs the z-buffer pass. ``"torch"``: the pure-PyTorch twin (any device). ``"cuda"``: the CUDA
            kernel of ``custom_ops/raster`` (:mod:`dreamkit.render.cuda_raster`, built on first use), same keys and
            tie-break as the twin; raises with the reason and the fix when it cannot be built. ``"nvdiffrast"``:
            nvdiffrast's rasterizer when installed (face ids only; near-plane clipping and ties differ).
            ``"auto"`` (default): the CUDA kernel for CUDA tensors when it builds (otherwise one loud warning and
            the twin), the twin for CPU tensors. Whatever the backend, the barycentrics and depth are recomputed
            by the same differentiable torch code from the winning face ids.

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
    resolved = _resolve_backend(backend, verts.device)
    keys = _visibility(verts.detach(), faces, viewmats.detach(), Ks.detach(), width, height, near, max_pairs,
                       cull_backfaces, backend=resolved)

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


@dataclass
class MeshTopology:
    """Edge adjacency for :func:`antialias` (nvdiffrast's ``topology_hash``), computed by :func:`mesh_topology`.

    Edge ``i`` of face ``f`` is the one opposite its vertex ``i`` (from vertex ``i+1`` to ``i+2``, as in the edge
    functions of the rasterizer).

    Attributes:
        faces: [F, 3] long, the faces it was computed for.
        neighbor: [F, 3] long, the face across edge ``i`` of face ``f``; -1 on boundary and non-manifold edges
            (shared by one face, or by three or more), which are always silhouette candidates.
        apex: [F, 3] long, the vertex of that neighbour that is not on the shared edge; -1 where there is none.
    """

    faces: torch.Tensor
    neighbor: torch.Tensor
    apex: torch.Tensor


@torch.no_grad()
def mesh_topology(faces: torch.Tensor, verts: Optional[torch.Tensor] = None) -> MeshTopology:
    """Edge adjacency of a triangle mesh, for :func:`antialias`.

    When ``verts`` is given, vertices at exactly the same position are welded first, so meshes whose vertices are
    split along colour or UV seams (flat-coloured meshes such as the shipped house) still have their surface
    connected: only true boundaries and folds become silhouettes. Compute it once per mesh connectivity and pass it
    to :func:`antialias` to save the work when rendering many times.
    """
    faces = faces.long()
    n_faces = faces.shape[0]
    device = faces.device
    ids = faces
    if verts is not None:
        _, weld = torch.unique(verts.detach(), dim=0, return_inverse=True)
        ids = weld[faces]
    n_ids = int(ids.max()) + 1 if n_faces else 1
    start = ids[:, [1, 2, 0]]  # edge i runs from vertex i+1 to vertex i+2
    end = ids[:, [2, 0, 1]]
    key = (torch.minimum(start, end) * n_ids + torch.maximum(start, end)).reshape(-1)  # [3F], entry 3f + i
    key = torch.where((start != end).reshape(-1), key, -1 - torch.arange(3 * n_faces, device=device))  # unique
    order = torch.argsort(key)
    sorted_key = key[order]
    _, inverse, counts = torch.unique_consecutive(sorted_key, return_inverse=True, return_counts=True)
    pos = torch.arange(order.numel(), device=device)
    # Manifold edges are the groups of exactly two entries: pair the first of each group with the second.
    is_first = torch.ones_like(pos, dtype=torch.bool)
    is_first[1:] = sorted_key[1:] != sorted_key[:-1]
    pair = is_first & (counts[inverse] == 2)
    a = order[pos[pair]]
    b = order[pos[pair] + 1]
    neighbor = torch.full((3 * n_faces,), -1, dtype=torch.long, device=device)
    apex = torch.full((3 * n_faces,), -1, dtype=torch.long, device=device)
    fa, ia = torch.div(a, 3, rounding_mode="floor"), a % 3
    fb, ib = torch.div(b, 3, rounding_mode="floor"), b % 3
    neighbor[a], neighbor[b] = fb, fa
    apex[a], apex[b] = faces[fb, ib], faces[fa, ia]
    return MeshTopology(faces=faces, neighbor=neighbor.view(n_faces, 3), apex=apex.view(n_faces, 3))


def _silhouette_crossings(face, b, line, c_in, direction, axis, faces, topology, uv, in_front, n_verts):
    """For M pixel pairs and a face each: which of the face's 3 edges are silhouettes crossing the pair's segment
    in the pair's major direction (``ok`` [M, 3]), where (``s`` [M, 3], differentiable: distance of the crossing
    from the front pixel's centre), and which are inner edges crossing it (``walk`` [M, 3]). See :func:`antialias`.
    """
    along, across = axis, 1 - axis
    corners = faces[face]  # [M, 3]
    row = (b * n_verts)[:, None]
    start = uv[row + corners[:, [1, 2, 0]]]  # [M, 3 edges, 2]; edge i runs vertex i+1 → i+2
    end = uv[row + corners[:, [2, 0, 1]]]
    with torch.no_grad():
        sa, ea = start[..., across], end[..., across]
        d_across = ea - sa
        d_along = end[..., along] - start[..., along]
        # Half-open span, so that at a vertex exactly on the pair's line only one of its two edges counts.
        spans = (torch.minimum(sa, ea) <= line[:, None]) & (line[:, None] < torch.maximum(sa, ea))
        major = d_across.abs() >= d_along.abs() if axis == 0 else d_across.abs() > d_along.abs()
        # Silhouette: no neighbour (or one behind the near plane), or the neighbour's apex projects onto the same
        # side of the edge as this face's own apex (the surface folds away from the viewer there). Winding-free.
        nb_apex = topology.apex[face]  # [M, 3]
        nb_row = row + nb_apex.clamp(min=0)
        own = uv[row + corners]  # [M, 3, 2], vertex i is edge i's apex
        nb = uv[nb_row]

        def side(p):
            return (end[..., 0] - start[..., 0]) * (p[..., 1] - start[..., 1]) - \
                (end[..., 1] - start[..., 1]) * (p[..., 0] - start[..., 0])

        silhouette = (nb_apex < 0) | ~in_front[nb_row] | (side(own) * side(nb) >= 0)
    span = end[..., across] - start[..., across]  # differentiable (d_across above is not)
    t = (line[:, None] - start[..., across]) / torch.where(d_across != 0, span, torch.ones_like(span))
    cross = start[..., along] + t * (end[..., along] - start[..., along])  # [M, 3], differentiable
    s = (cross - c_in[:, None]) * direction[:, None]
    with torch.no_grad():
        inside = spans & (s >= 0) & (s <= 1)
        ok = inside & major & silhouette
        walk = inside & ~silhouette
    return ok, s, walk


def antialias(
    color: torch.Tensor,
    fragments: Fragments,
    verts: torch.Tensor,
    viewmats: torch.Tensor,
    Ks: torch.Tensor,
    topology: Optional[MeshTopology] = None,
    near: float = 0.01,
) -> torch.Tensor:
    """Analytic antialiasing with gradients at silhouettes (nvdiffrast's ``antialias``; Laine et al. 2020,
    "Modular Primitives for High-Performance Differentiable Rendering").

    The rasterizer samples one point per pixel, so an image is a step function of the vertex positions at
    silhouettes and occlusion boundaries, with zero gradient there. This step blends, for every pair of
    horizontally or vertically adjacent pixels with different face ids, the two colours by where a silhouette edge
    crosses the segment between the two pixel centres:

    * the *front* face of the pair is the one with the smaller depth (the background is infinitely far);
    * among its three edges, one that is a silhouette in this view (a boundary edge, or an edge whose neighbouring
      face projects onto the same side of it, i.e. the surface folds away there) and crosses the segment; an edge
      is handled by the pairs across its major direction only (horizontal pairs for edges steeper than 45°,
      vertical pairs for flatter ones), so each silhouette is counted once; when the segment leaves the front face
      through an inner edge first (a thin sliver along the silhouette holds no pixel centre), the face across that
      edge is tested too (one step of a walk over the topology);
    * with ``s`` ∈ [0, 1] the crossing's distance from the front pixel's centre (in pixels, along the pair), the
      edge covers the fraction ``s - 1/2`` of the other pixel when ``s > 1/2`` — that pixel moves by
      ``(s - 1/2)·(c_front - c_other)`` — and leaves uncovered ``1/2 - s`` of the front pixel otherwise — it moves
      by ``(1/2 - s)·(c_other - c_front)``. For a straight edge this is the exact area coverage of the pixel row (or
      column) the edge crosses, and it is continuous when the edge passes a pixel centre.

    ``s`` is computed with autograd from the projected vertex positions, so gradients reach ``verts`` (and the
    cameras) through silhouettes, in addition to the interior gradients that flow through ``fragments``'
    barycentrics. Vectorised over the pixel pairs whose face ids differ (no Python loop over pixels or faces).

    Args:
        color: [B, H, W, C] shaded image, background already composited (e.g. rgb and alpha concatenated).
        fragments: the :func:`rasterize_mesh` output the image was shaded from.
        verts: [V, 3], viewmats: [B, 4, 4], Ks: [B, 3, 3]: what was given to :func:`rasterize_mesh`.
        topology: :func:`mesh_topology` of the mesh; computed here (welding coincident vertices) when ``None``.
        near: the ``near`` given to :func:`rasterize_mesh` (a neighbour face behind it counts as absent).

    Returns:
        [B, H, W, C] the antialiased image, differentiable w.r.t. ``color``, ``verts``, ``viewmats`` and ``Ks``.
    """
    faces = fragments.faces
    if topology is None:
        topology = mesh_topology(faces, verts)
    B, H, W = fragments.face_id.shape
    if color.shape[:3] != (B, H, W):
        raise ValueError(f"color must be [{B}, {H}, {W}, C] like the fragments, got {tuple(color.shape)}")
    n_channels = color.shape[-1]
    dtype = verts.dtype if verts.dtype in (torch.float32, torch.float64) else torch.float32
    cam = _to_camera(verts.to(dtype), viewmats.to(dtype))  # [B, V, 3]
    uv = _project(cam, Ks.to(dtype)).reshape(-1, 2)  # [B·V, 2], differentiable
    in_front = (cam[..., 2] > near).reshape(-1)  # [B·V]
    n_verts = verts.shape[0]
    face_id = fragments.face_id.reshape(-1)
    depth = torch.where(face_id >= 0, fragments.depth.detach().reshape(-1).to(dtype),
                        torch.full_like(face_id, float("inf"), dtype=dtype))
    flat_color = color.reshape(B * H * W, n_channels)

    index_parts, delta_parts = [], []
    for axis in (0, 1):  # 0: horizontal pairs (x, x+1); 1: vertical pairs (y, y+1)
        fid = fragments.face_id
        if axis == 0:
            differ = fid[:, :, :-1] != fid[:, :, 1:]
            b, y, x = torch.nonzero(differ, as_tuple=True)
            p0 = (b * H + y) * W + x
            p1 = p0 + 1
        else:
            differ = fid[:, :-1, :] != fid[:, 1:, :]
            b, y, x = torch.nonzero(differ, as_tuple=True)
            p0 = (b * H + y) * W + x
            p1 = p0 + W
        if p0.numel() == 0:
            continue
        front_is_0 = depth[p0] <= depth[p1]
        p_in = torch.where(front_is_0, p0, p1)  # pixel covered by the front face
        p_out = torch.where(front_is_0, p1, p0)
        face = face_id[p_in]  # [M] ≥ 0
        pix = torch.stack([x, y], -1).to(dtype) + 0.5  # centre of p0
        along, across = axis, 1 - axis  # coordinates along and across the pixel pair
        c_in = torch.where(front_is_0, pix[:, along], pix[:, along] + 1.0)  # the front pixel's centre, along
        direction = torch.where(front_is_0, 1.0, -1.0).to(dtype)  # from the front pixel towards the other
        line = pix[:, across]  # the pair's line, across
        ok, s, walk = _silhouette_crossings(face, b, line, c_in, direction, axis, faces, topology, uv, in_front,
                                            n_verts)
        hit = ok.any(1)
        edge = ok.to(torch.int8).argmax(1)  # the first qualifying edge
        s_hit = s.gather(1, edge[:, None]).squeeze(1)
        # Thin slivers: when the segment leaves the front face through an inner (non-silhouette) edge, the
        # silhouette may belong to the face across it, whose own pixel centres all lie elsewhere. Walk one step.
        retry = torch.nonzero(~hit & walk.any(1)).squeeze(1)
        if retry.numel():
            step = walk[retry].to(torch.int8).argmax(1)
            face2 = topology.neighbor[face[retry], step]
            ok2, s2, _ = _silhouette_crossings(face2, b[retry], line[retry], c_in[retry], direction[retry], axis,
                                               faces, topology, uv, in_front, n_verts)
            edge2 = ok2.to(torch.int8).argmax(1)
            s_hit = s_hit.index_put((retry,), s2.gather(1, edge2[:, None]).squeeze(1))
            hit = hit.index_put((retry,), ok2.any(1))
        sel = torch.nonzero(hit).squeeze(1)
        if sel.numel() == 0:
            continue
        s_hit = s_hit[sel]  # [K]
        c_front = flat_color[p_in[sel]]
        c_other = flat_color[p_out[sel]]
        into_other = s_hit > 0.5
        target = torch.where(into_other, p_out[sel], p_in[sel])
        weight = torch.where(into_other, s_hit - 0.5, 0.5 - s_hit).to(color.dtype)[:, None]
        sign = torch.where(into_other, 1.0, -1.0).to(color.dtype)[:, None]
        index_parts.append(target)
        delta_parts.append(sign * weight * (c_front - c_other))
    if not index_parts:
        return color
    delta = torch.zeros_like(flat_color).index_add(0, torch.cat(index_parts), torch.cat(delta_parts))
    return (flat_color + delta).view_as(color)


_antialias = antialias  # render_mesh_colors has an argument of that name


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
    antialias: bool = False,
    topology: Optional[MeshTopology] = None,
    backend: str = "auto",
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
        near, cull_backfaces, backend: see :func:`rasterize_mesh`.
        antialias: apply :func:`antialias` to rgb and alpha (before the ``ssaa`` pooling): smooth silhouettes whose
            gradients reach ``verts``. ``topology`` (:func:`mesh_topology`) saves recomputing the adjacency.

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
                           cull_backfaces=cull_backfaces, backend=backend)
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
    if antialias:
        blended = _antialias(torch.cat([rgb, alpha], -1), frags, verts, cams.viewmats.to(verts.device),
                             cams.K.to(verts.device), topology=topology, near=near)
        rgb, alpha = blended[..., :3], blended[..., 3:]
    if ssaa > 1:
        def pool(x):
            return F.avg_pool2d(x.permute(0, 3, 1, 2), ssaa).permute(0, 2, 3, 1)

        rgb = pool(rgb)
        covered = pool(frags.mask.to(rgb.dtype)[..., None])  # depth averages over covered sub-samples
        depth = torch.where(covered > 0, pool(depth) / covered.clamp(min=1e-12), torch.zeros_like(covered))
        alpha = pool(alpha)
    return rgb, alpha, depth
