"""Differentiable rasterization of 3D Gaussians: gsplat's CUDA kernels when available, a tile-binned torch twin else.

The algorithm is 3D Gaussian Splatting (Kerbl et al. 2023): every Gaussian is projected to an image-space ellipse
with the EWA splatting approximation (Zwicker et al. 2001: the Jacobian of the perspective projection at the mean),
the ellipses are binned into square tiles, sorted front to back, and alpha-composited per pixel. Numerical
conventions follow gsplat (nerfstudio-project/gsplat), so that the two backends agree:

* pixel centres at ``(x + 0.5, y + 0.5)``; ``eps2d`` added to the diagonal of every 2D covariance (a low-pass filter);
* ``alpha = min(0.999, opacity · exp(-½ dᵀ Σ⁻¹ d))``, and samples with ``alpha < 1/255`` are skipped;
* the Jacobian is evaluated with the view direction clamped to 1.3× the field of view (3DGS);
* a Gaussian's support is its ``alpha ≥ 1/255`` ellipse, ``dᵀ Σ⁻¹ d ≤ 2·ln(255·opacity)`` (at most 3.33σ), and
  ``radii`` are the per-axis half extents of that ellipse, rounded up.

The torch twin differs from gsplat's kernel in two negligible respects: gsplat stops compositing a pixel once its
transmittance would fall below 1e-4 (the twin composites every sample, so they differ by < 1e-4 there), and the twin
flushes transmittance below 1e-20 to zero (it keeps slow denormal floats out of the CPU passes).

The twin is written for speed on CPUs (about 25× faster than a dense every-pixel-times-every-Gaussian renderer at
5k Gaussians, 4 × 64²; see scripts/bench_splat.py):

* every (camera, tile, Gaussian) intersection, found from the Gaussian's support box, becomes one row of a dense
  [pairs, tile_size²] tensor; rows are sorted by (camera, tile, depth) with one integer sort and padded per tile to
  chunks of ``_CHUNK_LEN`` rows;
* the exponent ``log(o) - ½ dᵀ Σ⁻¹ d`` over a tile is a quadratic polynomial in the pixel offset, so all exponents are
  one GEMM of per-pair coefficients with a fixed monomial basis;
* transmittance is a cumulative product inside each chunk times a float64 log-space prefix over the tile's earlier
  chunks (exact: no cancellation), colours are a batched matrix product per chunk;
* the backward pass is written by hand (the 3DGS gradient: dL/dα_i needs the colour accumulated *behind* sample i,
  a reverse cumulative sum) instead of taping a dozen full-size intermediates.

Memory is about five float tensors of [pairs × tile_size²] per call (plus two kept for backward), e.g. 10 MB each for
5k Gaussians in 4 cameras at 64².
"""
from __future__ import annotations

import math
import warnings
from typing import NamedTuple, Optional

import torch
from torch import Tensor

__all__ = [
    "rasterize_gaussians",
    "project_gaussians",
    "gsplat_available",
    "keep_freed_cpu_memory",
    "ALPHA_THRESHOLD",
    "ALPHA_MAX",
]

ALPHA_THRESHOLD = 1.0 / 255.0  # samples fainter than this are skipped (3DGS)
ALPHA_MAX = 0.999  # per-sample alpha clamp (gsplat; the original 3DGS code uses 0.99)
MAX_EXTEND = 3.33  # support radius in standard deviations for opacity 1 (sqrt(2·ln 255) ≈ 3.329)

# Pairs of one tile are padded to a multiple of this many rows; each chunk is one batched-matmul block.
_CHUNK_LEN = 32
_LOG_ALPHA_MAX = math.log(ALPHA_MAX)
_LOG_TRANSMITTANCE_MIN = -46.0  # transmittance below e^-46 ≈ 1e-20 is flushed to 0
_DUMMY_LOG_OPACITY = -60.0  # padding slots: alpha ≤ e^-60, far below the threshold (and not a float32 denormal)


_GSPLAT_IMPORTS: Optional[bool] = None  # cached result of importing gsplat
_GSPLAT_RUNS: Optional[bool] = None  # whether its first rasterization in "auto" mode worked (kernels compiled)


def gsplat_available() -> bool:
    """True when gsplat imports (it compiles its CUDA kernels on first use, so this does not prove they run)."""
    global _GSPLAT_IMPORTS
    if _GSPLAT_IMPORTS is None:
        try:
            import gsplat  # noqa: F401
        except Exception:
            _GSPLAT_IMPORTS = False
        else:
            _GSPLAT_IMPORTS = True
    return _GSPLAT_IMPORTS


def default_tile_size(width: int, height: int) -> int:
    """Tile edge of the torch twin. 4 was fastest on a 2-core CPU at both 64² and 128² (scripts/bench_splat.py):
    smaller tiles waste fewer pixel evaluations outside each Gaussian's ellipse, larger ones have fewer pairs."""
    return 4


def keep_freed_cpu_memory(threshold_bytes: int = 1 << 30) -> bool:
    """Ask glibc's malloc to keep freed blocks up to ``threshold_bytes`` for reuse instead of returning them to the OS.

    The torch twin allocates several tensors of [pairs·tile², 4 bytes] every step (about 10 MB each for 5k Gaussians,
    4 cameras, 64²). By default glibc hands such blocks back to the OS when they are freed, so every step page-faults
    them in again; in a virtual machine that cost a quarter of the rasterizer's time (measured with
    scripts/bench_splat.py). This is process-wide, so it is opt-in: a training entry point may call it once. The
    price is that the process keeps its peak heap size. Returns False where it does not apply (not Linux/glibc).
    """
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt parameters from <malloc.h>
        return bool(libc.mallopt(M_MMAP_THRESHOLD, threshold_bytes)) and bool(
            libc.mallopt(M_TRIM_THRESHOLD, threshold_bytes)
        )
    except (OSError, AttributeError):
        return False


def rasterize_gaussians(
    means: Tensor,
    quats: Tensor,
    scales: Tensor,
    opacities: Tensor,
    colors: Tensor,
    viewmats: Tensor,
    Ks: Tensor,
    width: int,
    height: int,
    background: Optional[Tensor] = None,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    eps2d: float = 0.3,
    tile_size: Optional[int] = None,
    backend: str = "auto",
    exact_sum: bool = False,
) -> tuple[Tensor, Tensor, Tensor, dict]:
    """Render N Gaussians into B pinhole cameras (OpenCV axes: x right, y down, z forward).

    Args:
        means: [N, 3] world positions.
        quats: [N, 4] rotations, wxyz, need not be normalised.
        scales: [N, 3] standard deviations along the rotated axes (activated, > 0).
        opacities: [N] in [0, 1] (activated).
        colors: [N, D] or [B, N, D] evaluated colours (D = 3 for RGB; use :func:`dreamkit.render.sh.eval_sh` for SH).
        viewmats: [B, 4, 4] world-to-camera matrices (``Cameras.viewmats``).
        Ks: [B, 3, 3] pixel intrinsics.
        width, height: image size in pixels.
        background: [B, D], [D] or None (black), composited behind the Gaussians.
        near_plane, far_plane: Gaussians whose camera-space z is outside (near, far) are culled.
        eps2d: added to the diagonal of every projected 2D covariance (pixels²), a low-pass filter.
        tile_size: tile edge in pixels; None picks :func:`default_tile_size` (torch) or 16 (gsplat).
        backend: "auto" (gsplat for CUDA tensors when it imports, the torch twin otherwise), "torch" or "gsplat".
        exact_sum: torch twin only. Sum each Gaussian's gradient over the B images exactly (float64, see
            :class:`_PerImage`), so that the gradients do not depend on how a batch is split over processes
            (``trainer.exact_batch_sum``, docs/scaling.md); off: autograd's float32 sums, as always.

    Returns:
        rgb: [B, H, W, D] ``Σ_i w_i c_i + T·background``, with ``w_i = α_i Π_{j<i}(1 - α_j)`` front to back and
            ``T = Π_i (1 - α_i)``.
        alpha: [B, H, W, 1] accumulated opacity ``1 - T``.
        depth: [B, H, W, 1] *accumulated* camera-space z, ``Σ_i w_i z_i`` (gsplat's "D" mode, not divided by alpha:
            divide by ``alpha`` for the expected depth of the visible surface; 0 where empty).
        meta: dict with
            ``means2d`` [B, N, 2]: projected means in pixels, part of the autograd graph (``retain_grad`` is called
            when it requires grad), so after ``backward`` its ``.grad`` is the image-space positional gradient that
            3DGS densification thresholds;
            ``radii`` [B, N] int32: half extent in pixels of each Gaussian's support (max over the two axes), 0 where
            culled or off-screen;
            ``depths`` [B, N]: camera-space z; ``width``, ``height``, ``n_cameras``, ``tile_size``, ``backend``.
    """
    global _GSPLAT_RUNS
    if backend not in ("auto", "torch", "gsplat"):
        raise ValueError(f"backend must be 'auto', 'torch' or 'gsplat', got {backend!r}")
    gsplat_args = (
        means, quats, scales, opacities, colors, viewmats, Ks, width, height, background,
        near_plane, far_plane, eps2d, tile_size if tile_size is not None else 16,
    )
    if exact_sum:
        if backend == "gsplat" or means.is_cuda:
            raise ValueError("exact_sum is a feature of the torch rasterizer on the CPU (trainer.exact_batch_sum)")
        return _rasterize_torch(
            means, quats, scales, opacities, colors, viewmats, Ks, width, height, background,
            near_plane, far_plane, eps2d, tile_size if tile_size is not None else default_tile_size(width, height),
            exact_sum=True,
        )
    if backend == "gsplat":
        return _rasterize_gsplat(*gsplat_args)
    if backend == "auto" and means.is_cuda and _GSPLAT_RUNS is not False and gsplat_available():
        if _GSPLAT_RUNS:
            return _rasterize_gsplat(*gsplat_args)
        try:  # the first call compiles gsplat's kernels; if that fails, fall back to the twin for good
            out = _rasterize_gsplat(*gsplat_args)
        except Exception as err:
            _GSPLAT_RUNS = False
            warnings.warn(f"gsplat failed ({err!r}); rendering Gaussians with the torch rasterizer instead")
        else:
            _GSPLAT_RUNS = True
            return out
    return _rasterize_torch(
        means, quats, scales, opacities, colors, viewmats, Ks, width, height, background,
        near_plane, far_plane, eps2d, tile_size if tile_size is not None else default_tile_size(width, height),
    )


# ----------------------------------------------------------------------------------------------------------------------
# gsplat path
# ----------------------------------------------------------------------------------------------------------------------


def _rasterize_gsplat(
    means, quats, scales, opacities, colors, viewmats, Ks, width, height, background, near_plane, far_plane, eps2d,
    tile_size,
):
    try:
        import gsplat  # imported here only: it compiles CUDA kernels on first use
    except Exception as err:  # pragma: no cover - depends on the machine
        raise RuntimeError(
            "backend='gsplat' needs the gsplat package (pip install 'dreamkit[cuda]') and a CUDA build of torch; "
            f"importing it failed: {err!r}. Use backend='torch' for the pure-torch rasterizer."
        ) from err
    if not means.is_cuda:
        raise RuntimeError("backend='gsplat' needs CUDA tensors; move the Gaussians and cameras to a GPU first")
    B = viewmats.shape[0]
    D = colors.shape[-1]
    backgrounds = None
    if background is not None:
        backgrounds = background.to(means).expand(B, D).contiguous()
    render, alphas, info = gsplat.rasterization(
        means, quats, scales, opacities, colors, viewmats, Ks, width, height,
        near_plane=near_plane, far_plane=far_plane, eps2d=eps2d, packed=False, tile_size=tile_size,
        backgrounds=backgrounds, render_mode="RGB+D",
    )
    # packed=False: means2d [B, N, 2]; radii [B, N] (gsplat < 1.5) or [B, N, 2] per axis (gsplat ≥ 1.5).
    means2d = info["means2d"]
    if means2d.requires_grad:
        means2d.retain_grad()
    radii = info["radii"]
    if radii.dim() == 3:
        radii = radii.max(dim=-1).values
    meta = {
        "means2d": means2d,
        "radii": radii.to(torch.int32),
        "depths": info.get("depths"),
        "width": width,
        "height": height,
        "n_cameras": B,
        "tile_size": tile_size,
        "backend": "gsplat",
        "gsplat_info": info,
    }
    return render[..., :D], alphas, render[..., D:D + 1], meta


# ----------------------------------------------------------------------------------------------------------------------
# Projection (EWA splatting), shared by the torch twin and its tests
# ----------------------------------------------------------------------------------------------------------------------


def _quat_to_rotmat(quats: Tensor) -> Tensor:
    """[N, 4] wxyz (any norm) → [N, 3, 3] rotation matrices."""
    q = quats / quats.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    w, x, y, z = q.unbind(-1)
    rows = (
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    )
    return torch.stack(rows, dim=-1).reshape(q.shape[:-1] + (3, 3))


def project_gaussians(
    means: Tensor,
    quats: Tensor,
    scales: Tensor,
    viewmats: Tensor,
    Ks: Tensor,
    width: int,
    height: int,
    eps2d: float = 0.3,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
) -> dict[str, Tensor]:
    """EWA projection of 3D Gaussians into B pinhole cameras (Zwicker et al. 2001; 3DGS, Kerbl et al. 2023).

    Σ_world = R S Sᵀ Rᵀ; in camera space Σ_cam = W Σ_world Wᵀ; Σ_2d = J Σ_cam Jᵀ + eps2d·I with J the Jacobian of
    (x, y, z) ↦ (fx·x/z + cx, fy·y/z + cy) at the mean (direction clamped to 1.3× the field of view, as 3DGS).

    Args: as :func:`rasterize_gaussians`.

    Returns: dict of
        ``means2d`` [B, N, 2] pixels; ``depths`` [B, N] camera z; ``cov2d`` [B, N, 3] (xx, xy, yy) including eps2d;
        ``conics`` [B, N, 3] (a, b, c) of Σ_2d⁻¹ = [[a, b], [b, c]]; ``valid`` [B, N] bool (inside the depth range
        with a positive-definite Σ_2d). Entries that are not valid hold finite placeholders.
    """
    R = _quat_to_rotmat(quats)  # [N, 3, 3] ([B, N, 3, 3] for per-image copies)
    M = R * scales[..., None, :]  # R·diag(s), so Σ_world = M Mᵀ
    Rv = viewmats[:, :3, :3]  # [B, 3, 3]
    tv = viewmats[:, :3, 3]  # [B, 3]
    if means.dim() == 3:  # per-image copies [B, N, ...] (exact_sum): every product stays within its image
        p_cam = torch.einsum("bij,bnj->bni", Rv, means) + tv[:, None, :]
        W = torch.einsum("bij,bnjk->bnik", Rv, M)
    else:
        p_cam = torch.einsum("bij,nj->bni", Rv, means) + tv[:, None, :]  # [B, N, 3]
        W = torch.einsum("bij,njk->bnik", Rv, M)  # [B, N, 3, 3], Σ_cam = W Wᵀ
    x, y, z = p_cam.unbind(-1)
    in_range = (z > near_plane) & (z < far_plane)
    # Placeholder depth for culled entries, so that nothing divides by ~0 (0·inf would poison the gradients).
    z_safe = torch.where(in_range, z, torch.ones_like(z))
    fx, fy = Ks[:, 0, 0, None], Ks[:, 1, 1, None]  # [B, 1]
    cx, cy = Ks[:, 0, 2, None], Ks[:, 1, 2, None]
    u, v = x / z_safe, y / z_safe
    means2d = torch.stack([fx * u + cx, fy * v + cy], dim=-1)

    # Jacobian rows J0 = fx/z·(1, 0, -u), J1 = fy/z·(0, 1, -v), with u, v clamped to 1.3× the half field of view.
    lim_x_pos = (width - cx) / fx + 0.3 * (0.5 * width / fx)
    lim_x_neg = cx / fx + 0.3 * (0.5 * width / fx)
    lim_y_pos = (height - cy) / fy + 0.3 * (0.5 * height / fy)
    lim_y_neg = cy / fy + 0.3 * (0.5 * height / fy)
    u_c = torch.maximum(torch.minimum(u, lim_x_pos), -lim_x_neg)
    v_c = torch.maximum(torch.minimum(v, lim_y_pos), -lim_y_neg)
    W0, W1, W2 = W[..., 0, :], W[..., 1, :], W[..., 2, :]  # rows of W, [B, N, 3]
    T0 = (fx / z_safe)[..., None] * (W0 - u_c[..., None] * W2)  # J0·W
    T1 = (fy / z_safe)[..., None] * (W1 - v_c[..., None] * W2)  # J1·W
    cxx = (T0 * T0).sum(-1) + eps2d
    cxy = (T0 * T1).sum(-1)
    cyy = (T1 * T1).sum(-1) + eps2d
    det = cxx * cyy - cxy * cxy
    valid = in_range & (det > 0)
    inv_det = 1.0 / torch.where(valid, det, torch.ones_like(det))
    conics = torch.stack([cyy * inv_det, -cxy * inv_det, cxx * inv_det], dim=-1)
    return {
        "means2d": means2d,
        "depths": z,
        "cov2d": torch.stack([cxx, cxy, cyy], dim=-1),
        "conics": conics,
        "valid": valid,
    }


def support_extents(cov2d: Tensor, opacities: Tensor) -> tuple[Tensor, Tensor]:
    """Half extents (pixels, x and y) of the ``alpha ≥ 1/255`` ellipse: k·sqrt(Σ_xx), k·sqrt(Σ_yy),
    k = min(3.33, sqrt(2·ln(255·opacity))); zero where opacity < 1/255. cov2d [..., 3], opacities broadcastable."""
    ratio = (opacities / ALPHA_THRESHOLD).clamp_min(1.0)
    k = torch.sqrt(2.0 * torch.log(ratio)).clamp(max=MAX_EXTEND)
    k = torch.where(opacities >= ALPHA_THRESHOLD, k, torch.zeros_like(k))
    return k * cov2d[..., 0].clamp_min(0).sqrt(), k * cov2d[..., 2].clamp_min(0).sqrt()


# ----------------------------------------------------------------------------------------------------------------------
# Torch twin
# ----------------------------------------------------------------------------------------------------------------------


class _PerImage(torch.autograd.Function):
    """B per-image copies [B, ...] of each input [...] whose backward sums the B images' gradients in float64.

    A sum of a few float32 numbers in float64 is exact (barring exponents more than 29 bits apart), so the result
    does not depend on the order of the terms: a batch split over W processes, each summing its own images and then
    adding the W partial sums (all-reduced in float64), rounds to the same float32 gradient as one process summing all
    B images. Under a process group of W > 1 ranks the backward all-reduces the partial sums itself; rank zero then
    returns W × the mean and the others zeros, so the system's ordinary averaging of gradients over the ranks
    (dreamkit.distributed.average_gradients) yields the mean exactly (W a power of two: every scaling is exact)."""

    @staticmethod
    def forward(ctx, batch: int, *tensors: Tensor):
        return tuple(t.unsqueeze(0).expand(batch, *t.shape).contiguous() for t in tensors)

    @staticmethod
    def backward(ctx, *grads: Tensor):
        totals = [g.double().sum(0) for g in grads]
        dist = torch.distributed
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            flat = torch.cat([t.reshape(-1) for t in totals])
            dist.all_reduce(flat, op=dist.ReduceOp.SUM)
            if dist.get_rank() != 0:  # rank zero carries the sum over all images, W × their mean
                flat.zero_()
            totals = [part.view_as(t) for part, t in zip(flat.split([t.numel() for t in totals]), totals)]
        return (None, *(t.to(g.dtype) for t, g in zip(totals, grads)))


def _rasterize_torch(
    means, quats, scales, opacities, colors, viewmats, Ks, width, height, background, near_plane, far_plane, eps2d,
    tile_size, exact_sum: bool = False,
):
    B, N = viewmats.shape[0], means.shape[0]
    dtype, device = means.dtype, means.device
    D = colors.shape[-1]
    expected = {"means": (means, (N, 3)), "quats": (quats, (N, 4)), "scales": (scales, (N, 3)),
                "opacities": (opacities, (N,)), "viewmats": (viewmats, (B, 4, 4)), "Ks": (Ks, (B, 3, 3))}
    for name, (tensor, shape) in expected.items():
        if tuple(tensor.shape) != shape:
            raise ValueError(f"{name} must have shape {list(shape)}, got {list(tensor.shape)}")
    if colors.dim() == 2 and exact_sum:
        means, quats, scales, opacities, colors = _PerImage.apply(B, means, quats, scales, opacities, colors)
    elif exact_sum:
        raise ValueError("exact_sum needs colors [N, D] shared by the images (sh_degree 0)")
    if colors.dim() == 2:
        colors = colors.unsqueeze(0).expand(B, N, D)
    if colors.shape != (B, N, D):
        raise ValueError(f"colors must be [N, D] or [B, N, D] with B={B}, N={N}; got {tuple(colors.shape)}")
    S = int(tile_size)
    tiles_x, tiles_y = math.ceil(width / S), math.ceil(height / S)
    n_tiles = B * tiles_x * tiles_y

    proj = project_gaussians(means, quats, scales, viewmats, Ks, width, height, eps2d, near_plane, far_plane)
    means2d = proj["means2d"]
    if means2d.requires_grad:
        means2d.retain_grad()
    depths = proj["depths"]

    with torch.no_grad():
        opac_bn = opacities.detach().expand(B, N)  # (already [B, N] with exact_sum)
        rx, ry = support_extents(proj["cov2d"].detach(), opac_bn)
        layout = _bin_into_tiles(
            means2d.detach(), rx, ry, depths.detach(), proj["valid"] & (opac_bn >= ALPHA_THRESHOLD),
            width, height, S, tiles_x, tiles_y, near_plane, stable=exact_sum,
        )
        radii = torch.maximum(torch.ceil(rx), torch.ceil(ry)).to(torch.int32) * layout.visible

    # One column per (camera, Gaussian), plus a transparent dummy column that padding slots point at. Columns (not
    # rows) so that each parameter of the gathered slots is a contiguous row, and the scatter-add back is fast.
    log_opacity = torch.log(opacities.clamp_min(1e-30)).expand(B, N)
    table = torch.cat(
        [means2d.reshape(B * N, 2).T, proj["conics"].reshape(B * N, 3).T, log_opacity.reshape(1, B * N),
         colors.reshape(B * N, D).T, depths.reshape(1, B * N)],
        dim=0,
    )
    dummy = torch.zeros(table.shape[0], 1, dtype=dtype, device=device)
    dummy[5] = _DUMMY_LOG_OPACITY
    table = torch.cat([table, dummy], dim=1)  # [6 + D + 1, B·N + 1]
    clamp = bool(opacities.detach().max() > ALPHA_MAX * (1.0 - 1e-4)) if N > 0 else False
    feat, transmittance = _TileComposite.apply(table, layout, n_tiles, S, clamp)

    def to_image(t: Tensor) -> Tensor:  # [B·TY·TX, C, S²] → [B, H, W, C]
        c = t.shape[1]
        t = t.view(B, tiles_y, tiles_x, c, S, S).permute(0, 1, 4, 2, 5, 3)
        return t.reshape(B, tiles_y * S, tiles_x * S, c)[:, :height, :width]

    feat_img = to_image(feat)
    trans_img = to_image(transmittance.unsqueeze(1))
    rgb = feat_img[..., :D]
    if background is not None:
        bg = background.to(dtype=dtype, device=device)
        bg = bg.expand(B, D) if bg.dim() == 1 else bg
        rgb = rgb + trans_img * bg[:, None, None, :]
    meta = {
        "means2d": means2d,
        "radii": radii,
        "depths": depths,
        "width": width,
        "height": height,
        "n_cameras": B,
        "tile_size": S,
        "backend": "torch",
        "n_pairs": layout.n_pairs,
        "exact_sum": exact_sum,
    }
    return rgb, 1.0 - trans_img, feat_img[..., D:D + 1], meta


class _TileLayout(NamedTuple):
    slot_entry: Tensor  # [n·L] column of the [C, B·N + 1] table per slot (B·N: the transparent dummy, padding)
    chunk_tile: Tensor  # [n] flat tile id b·TY·TX + ty·TX + tx; the chunks of one tile are contiguous
    chunk_origin: Tensor  # [n, 2] pixel (x, y) of the tile's top-left corner
    tile_first: Tensor  # [n_tiles] first chunk of each tile (0 where it has none; never read then)
    tile_last: Tensor  # [n_tiles] last chunk of each tile
    visible: Tensor  # [B, N] bool: touches at least one pixel centre
    n_pairs: int
    chunk_len: int  # L, slots per chunk
    #: chunks of each image (their sum is n), when the running sums over chunks restart at every image so that an
    #: image's numbers do not depend on the images before it (exact_sum); None: one running sum over all chunks
    image_chunks: Optional[list] = None


def _running_sum(values: Tensor, layout: "_TileLayout") -> Tensor:
    """Inclusive cumulative sum over the chunks (dim 0): one pass over all of them, or restarted at every image
    (``layout.image_chunks``: then each image's sums are computed as they would be with that image alone)."""
    if layout.image_chunks is None:
        return values.cumsum(0)
    return torch.cat([part.cumsum(0) for part in values.split(layout.image_chunks)])


def _bin_into_tiles(
    means2d, rx, ry, depths, candidate, width, height, S, tiles_x, tiles_y, near_plane=0.0, stable=False
) -> _TileLayout:
    """Enumerate (camera, tile, Gaussian) intersections and lay them out in per-tile chunks, front to back.
    ``stable``: Gaussians of one image at the same depth keep their index order whatever the other images hold (an
    unstable sort may order such ties differently when other images' entries are in the array: exact_sum)."""
    B, N = depths.shape
    device = depths.device
    L = _CHUNK_LEN
    n_tiles = B * tiles_x * tiles_y
    # Pixel columns/rows whose centre (p + 0.5) lies within the support; a hair of margin absorbs rounding.
    mx, my = means2d[..., 0], means2d[..., 1]
    rx = rx * (1 + 1e-5) + 1e-4
    ry = ry * (1 + 1e-5) + 1e-4
    # Clamp in float before casting: far-off-screen means would overflow the integers otherwise.
    px0 = torch.ceil(mx - rx - 0.5).clamp(-1, width)
    px1 = torch.floor(mx + rx - 0.5).clamp(-1, width)
    py0 = torch.ceil(my - ry - 0.5).clamp(-1, height)
    py1 = torch.floor(my + ry - 0.5).clamp(-1, height)
    visible = (
        candidate & (px1 >= px0) & (py1 >= py0) & (px1 >= 0) & (px0 <= width - 1) & (py1 >= 0) & (py0 <= height - 1)
    )

    entry = visible.reshape(-1).nonzero().squeeze(1)  # flat b·N + n
    # Front to back. Depths of visible entries are > near_plane > 0, and the bit patterns of positive IEEE floats
    # sort like the floats themselves; sorting them as integers is faster than a float sort.
    visible_depth = depths.reshape(-1).index_select(0, entry)
    if depths.dtype in (torch.float32, torch.float64) and near_plane >= 0:
        visible_depth = visible_depth.view(torch.int32 if depths.dtype == torch.float32 else torch.int64)
    entry = entry.index_select(0, torch.argsort(visible_depth, stable=stable) if stable else torch.argsort(visible_depth))
    E = entry.numel()
    # Integer work below is int32 (half the memory traffic of int64) except the sort key.
    i32 = torch.int32
    box = torch.stack([px0, px1, py0, py1]).reshape(4, -1).index_select(1, entry)
    tx0 = box[0].clamp(0, width - 1).to(i32) // S
    tx1 = box[1].clamp(0, width - 1).to(i32) // S
    ty0 = box[2].clamp(0, height - 1).to(i32) // S
    ty1 = box[3].clamp(0, height - 1).to(i32) // S
    nx = tx1 - tx0 + 1
    count = nx * (ty1 - ty0 + 1)
    first_pair = torch.cumsum(count, 0, dtype=i32) - count
    cam = (entry // N).to(i32)
    # Per-entry integers gathered to the pairs in one index_select: first tile id, tiles per row, first pair.
    per_entry = torch.stack([(cam * tiles_y + ty0) * tiles_x + tx0, nx, first_pair])
    pair_entry = torch.repeat_interleave(torch.arange(E, device=device, dtype=i32), count)  # = depth rank
    P = pair_entry.numel()
    base_tile, nx_p, first_p = per_entry.index_select(1, pair_entry)
    local = torch.arange(P, device=device, dtype=i32) - first_p
    row = local // nx_p
    tile = base_tile + row * (tiles_x - nx_p) + local  # = base + row·tiles_x + (local - row·nx)
    # Sort pairs by (tile, depth rank), both packed in one integer key (int32 when it fits: twice as fast).
    E1 = max(E, 1)
    key = tile * E1 + pair_entry if n_tiles * E1 < 2**31 else tile.long() * E1 + pair_entry
    key, _ = torch.sort(key)
    tile = torch.div(key, E1, rounding_mode="floor")
    pair_gauss = entry.index_select(0, (key - tile * E1).long())
    tile = tile.long()

    counts = torch.bincount(tile, minlength=n_tiles)
    chunks_per_tile = (counts + L - 1) // L
    first_of_tile = torch.cumsum(counts, 0) - counts
    first_chunk = torch.cumsum(chunks_per_tile, 0) - chunks_per_tile
    n_chunks = int(chunks_per_tile.sum())
    shift = (first_chunk * L - first_of_tile).index_select(0, tile)
    slot_entry = torch.full((n_chunks * L,), B * N, dtype=torch.long, device=device)
    slot_entry[torch.arange(P, device=device) + shift] = pair_gauss
    chunk_tile = torch.repeat_interleave(torch.arange(n_tiles, device=device), chunks_per_tile)
    in_image = chunk_tile % (tiles_x * tiles_y)
    chunk_origin = torch.stack([(in_image % tiles_x) * S, torch.div(in_image, tiles_x, rounding_mode="floor") * S], -1)
    tile_last = first_chunk + chunks_per_tile - 1
    image_chunks = chunks_per_tile.view(B, -1).sum(1).tolist() if stable else None
    return _TileLayout(slot_entry, chunk_tile, chunk_origin, first_chunk, tile_last, visible, P, L, image_chunks)


def _pixel_basis(S: int, dtype, device) -> Tensor:
    """[6, S²] the monomials (u², uv, v², u, v, 1) of each tile pixel's offset (u, v) from the tile centre."""
    o = torch.arange(S, dtype=torch.float64) + 0.5 - 0.5 * S
    v, u = torch.meshgrid(o, o, indexing="ij")  # row-major pixels: v over rows, u over columns
    u, v = u.reshape(-1), v.reshape(-1)
    return torch.stack([u * u, u * v, v * v, u, v, torch.ones_like(u)]).to(dtype=dtype, device=device)


class _TileComposite(torch.autograd.Function):
    """Front-to-back alpha compositing of per-tile chunks of Gaussian samples, with a hand-written backward.

    Inputs:
        table: [6 + F, B·N + 1] one column per (camera, Gaussian): mean x, mean y, conic a, b, c, log opacity, then F
            features; the last column is a transparent dummy for padding slots.
        layout: the _TileLayout of _bin_into_tiles (slots sorted front to back within each tile).
    Outputs:
        feat: [n_tiles, F, S²] Σ_i w_i f_i per tile pixel (row-major in the tile), w_i = α_i Π_{j<i}(1 - α_j).
        transmittance: [n_tiles, S²] Π_i (1 - α_i).

    Per slot, the exponent E = log(o) - ½ dᵀ Σ⁻¹ d at the tile's pixels is a quadratic polynomial in the pixel's
    offset (u, v) from the tile centre, so all exponents of all slots are one GEMM: [n·L, 6] coefficients times the
    [6, S²] monomials (u², uv, v², u, v, 1); and the backward to the coefficients is the transposed GEMM.
    """

    @staticmethod
    def forward(ctx, table, layout, n_tiles, S, clamp):
        dtype = table.dtype
        n, L, S2 = layout.chunk_tile.numel(), layout.chunk_len, S * S
        F = table.shape[0] - 6
        slots = table.index_select(1, layout.slot_entry)  # [6 + F, n·L]
        ex, ey, coefs = _exponent_coefficients(slots, layout.chunk_origin, L, S)
        basis = _pixel_basis(S, dtype, table.device)
        exponent = (coefs.T @ basis).view(n, L, S2)
        # Clamping the exponent from below keeps exp() away from denormal results, which are very slow on CPUs.
        exponent.clamp_(min=-80.0, max=_LOG_ALPHA_MAX if clamp else None)
        clamped = exponent >= _LOG_ALPHA_MAX if clamp else None
        alpha = exponent.exp_()
        torch.nn.functional.threshold_(alpha, ALPHA_THRESHOLD, 0.0)  # 3DGS skips samples with α < 1/255

        # Transmittance behind each sample, T_{i+1} = Π_{j≤i}(1 - α_j): a cumulative product inside the chunk (no
        # cancellation), times the product over the tile's earlier chunks, accumulated in float64 log space on a
        # small [n, S²] tensor. Then w_i = α_i T_i = T_{i+1}·α_i/(1 - α_i), and that ratio is what backward needs.
        ratio = torch.sub(1.0, alpha)
        weights = torch.cumprod(ratio, dim=1)
        log_chunk = torch.log(weights[:, -1].double()).clamp_(min=-1e4)  # [n, S²]; an underflowed product reads 0
        cum = _running_sum(log_chunk, layout)
        before = cum - log_chunk  # Σ over every earlier chunk (all tiles)
        if n > 0:
            before -= before.index_select(0, layout.tile_first.index_select(0, layout.chunk_tile))  # restart per tile
            # Transmittance below e^-46 ≈ 1e-20 is flushed to 0: it changes nothing visible, and it keeps the samples
            # behind opaque surfaces from filling every later pass with slow denormal floats.
            before.masked_fill_(before < _LOG_TRANSMITTANCE_MIN, -math.inf)
            weights *= before.exp_().to(dtype).unsqueeze(1)
        torch.div(alpha, ratio, out=ratio)
        del alpha, exponent
        weights *= ratio

        feats = slots[6:].view(F, n, L).transpose(0, 1)  # [n, F, L]
        feat_tiles = table.new_zeros(n_tiles, F, S2)
        feat_tiles.index_add_(0, layout.chunk_tile, torch.bmm(feats, weights))
        log_tiles = log_chunk.new_zeros(n_tiles, S2).index_add_(0, layout.chunk_tile, log_chunk)
        trans_tiles = log_tiles.exp_().to(dtype)

        ctx.save_for_backward(slots, ex, ey, ratio, weights, trans_tiles, clamped)
        ctx.layout, ctx.S, ctx.table_shape = layout, S, table.shape
        return feat_tiles, trans_tiles

    @staticmethod
    def backward(ctx, grad_feat, grad_trans):
        slots, ex, ey, ratio, weights, trans_tiles, clamped = ctx.saved_tensors
        layout, S = ctx.layout, ctx.S
        n, L, S2 = weights.shape
        F = slots.shape[0] - 6
        dtype = slots.dtype
        if grad_feat is None:
            grad_feat = torch.zeros((trans_tiles.shape[0], F, S2), dtype=dtype, device=slots.device)
        if grad_trans is None:
            grad_trans = torch.zeros_like(trans_tiles)
        g_chunk = grad_feat.index_select(0, layout.chunk_tile)  # [n, F, S²]
        grad_feats = torch.bmm(g_chunk, weights.transpose(1, 2))  # [n, F, L]: dL/df_i = Σ_pix w_i G
        # ws_i = w_i (f_i · G): sample i's share of (dL/dC)·C at each pixel.
        feats_nlf = slots[6:].T.reshape(n, L, F)
        ws = torch.bmm(feats_nlf, g_chunk).mul_(weights)
        # behind_i = Σ_{j>i, same tile} ws_j + T_N·dL/dT_N, from an inclusive cumsum inside the chunk and the
        # totals of this chunk and of the tile's later chunks.
        behind = ws.cumsum(dim=1)
        chunk_tot = behind[:, -1].double()
        cum = _running_sum(chunk_tot, layout)
        rest = cum.index_select(0, layout.tile_last.index_select(0, layout.chunk_tile)) - cum + chunk_tot
        rest = rest.to(dtype) + (trans_tiles * grad_trans).index_select(0, layout.chunk_tile)
        torch.sub(rest.unsqueeze(1), behind, out=behind)
        # 3DGS gradient: dL/dα_i = T_i (f_i · G) - behind_i / (1 - α_i). With α = exp(E):
        # dL/dE = α dL/dα = ws_i - behind_i·α_i/(1 - α_i). Samples below the threshold have α = 0: no gradient.
        grad_e = ws.sub_(behind.mul_(ratio))
        del behind
        if clamped is not None:
            grad_e.masked_fill_(clamped, 0.0)  # clamped samples do not move with the exponent
        basis = _pixel_basis(S, dtype, slots.device)
        g = basis @ grad_e.view(n * L, S2).T  # [6, n·L] dL/d(coefficients)
        del grad_e
        # Chain rule through _exponent_coefficients (ex = tile centre x - mean x, likewise ey).
        ca, cb, cc = slots[2], slots[3], slots[4]
        lin_x = ca * ex + cb * ey
        lin_y = cb * ex + cc * ey
        grad_slots = torch.empty_like(slots)
        torch.add(ca * g[3] + cb * g[4], lin_x * g[5], out=grad_slots[0])  # mean x (dE/d mean = -dE/d ex)
        torch.add(cb * g[3] + cc * g[4], lin_y * g[5], out=grad_slots[1])
        torch.mul(g[0] + ex * (2.0 * g[3] + ex * g[5]), -0.5, out=grad_slots[2])
        torch.neg(g[1] + ey * g[3] + ex * g[4] + ex * ey * g[5], out=grad_slots[3])
        torch.mul(g[2] + ey * (2.0 * g[4] + ey * g[5]), -0.5, out=grad_slots[4])
        grad_slots[5] = g[5]
        grad_slots[6:].view(F, n, L).copy_(grad_feats.transpose(0, 1))
        grad_table = torch.zeros(ctx.table_shape, dtype=dtype, device=slots.device)
        grad_table.index_add_(1, layout.slot_entry, grad_slots)
        return grad_table, None, None, None, None


def _exponent_coefficients(slots: Tensor, chunk_origin: Tensor, L: int, S: int) -> tuple[Tensor, Tensor, Tensor]:
    """Coefficients of E(u, v) = log(o) - ½ dᵀ [[a, b], [b, c]] d, d = (u + ex, v + ey), over (u², uv, v², u, v, 1).

    slots: [6+F, n·L]; chunk_origin: [n, 2]. Returns ex, ey [n·L] (tile centre minus mean) and coefs [6, n·L].
    """
    n = chunk_origin.shape[0]
    mx, my, ca, cb, cc, lo = slots[:6]
    centre = chunk_origin.to(slots.dtype) + 0.5 * S  # [n, 2]
    ex = (centre[:, 0:1] - mx.view(n, L)).view(-1)
    ey = (centre[:, 1:2] - my.view(n, L)).view(-1)
    coefs = torch.empty(6, slots.shape[1], dtype=slots.dtype, device=slots.device)
    torch.mul(ca, -0.5, out=coefs[0])
    torch.neg(cb, out=coefs[1])
    torch.mul(cc, -0.5, out=coefs[2])
    lin_x = torch.neg(ca * ex + cb * ey, out=coefs[3])  # = -(a ex + b ey)
    lin_y = torch.neg(cb * ex + cc * ey, out=coefs[4])
    torch.add(lo, lin_x * ex + lin_y * ey, alpha=0.5, out=coefs[5])
    return ex, ey, coefs
