"""Geometry extraction: a density field → a grid → marching cubes → a clean, decimated, coloured :class:`Mesh`.

The protocol a representation meets to be exported as a mesh (see :func:`mesh_from_representation`), either

* ``export_mesh(export_cfg) -> Mesh`` — it extracts its own surface (an explicit mesh, DMTet), or
* ``query_density(points [N, 3]) -> [N]`` and ``query_color(points [N, 3]) -> [N, 3]`` (optionally a
  ``mesh_bound() -> [2, 3]`` box) — a field (NeRF, triplane) that marching cubes turns into a surface.

3D Gaussians meet the second form through :class:`GaussianField` (:func:`field_from_representation` wraps a
:class:`~dreamkit.representations.gaussians.GaussianModel`), following DreamGaussian (Tang et al. 2023,
"DreamGaussian", its ``extract_mesh``): density(x) = Σ_i o_i·exp(−½ (x−μ_i)ᵀ Σ_i⁻¹ (x−μ_i)) on a grid, then marching
cubes at a density threshold. Libraries: PyMCubes (marching cubes), fast-simplification (quadric decimation, the
backend of trimesh's ``simplify_quadric_decimation``), scipy (connected components, nearest neighbours).
"""
from __future__ import annotations

from typing import Any, Callable, Optional

import numpy as np
import torch

from ..errors import ConfigError, EmptyExport

from .mesh import Mesh, vertex_normals

__all__ = [
    "density_grid",
    "marching_cubes",
    "GaussianField",
    "VisualHullField",
    "RenderedColors",
    "fibonacci_view_directions",
    "field_from_representation",
    "keep_largest_components",
    "decimate",
    "extract_mesh",
    "mesh_from_representation",
]

Bound = Any  # a half-size b (the cube [−b, b]³) or a [2, 3] box (min corner, max corner)


def _box(bound: Bound) -> np.ndarray:
    """A half-size or a [2, 3] (min, max) box → [2, 3] float64."""
    arr = np.asarray(bound, dtype=np.float64)
    if arr.ndim == 0:
        return np.stack([-np.full(3, float(arr)), np.full(3, float(arr))])
    if arr.shape != (2, 3) or not (arr[1] > arr[0]).all():
        raise ValueError(f"bound must be a half-size or a [2, 3] (min, max) box, got {arr.tolist()}")
    return arr


def grid_points(resolution: int, bound: Bound) -> torch.Tensor:
    """[R, R, R, 3] float32 sample positions (index order x, y, z; the corners of the box are samples)."""
    box = _box(bound)
    axes = [torch.linspace(float(box[0, i]), float(box[1, i]), resolution) for i in range(3)]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), -1)


@torch.no_grad()
def density_grid(fn: Callable[[torch.Tensor], torch.Tensor], resolution: int, bound: Bound,
                 chunk: int = 1 << 18, device: torch.device | str = "cpu") -> np.ndarray:
    """Evaluate ``fn`` (points [N, 3] → densities [N]) on an R³ grid spanning ``bound``, ``chunk`` points at a time.

    Chunks are consecutive x-slabs, so a field that culls its primitives by the chunk's bounding box (as
    :class:`GaussianField` does) only touches the primitives near each slab. Returns [R, R, R] float32 (x, y, z).
    """
    points = grid_points(resolution, bound).reshape(-1, 3)
    out = torch.empty(points.shape[0], dtype=torch.float32)
    for start in range(0, points.shape[0], chunk):
        block = points[start:start + chunk].to(device)
        out[start:start + chunk] = fn(block).float().reshape(-1).cpu()
    return out.view(resolution, resolution, resolution).numpy()


def marching_cubes(grid: np.ndarray, threshold: float, bound: Bound) -> tuple[np.ndarray, np.ndarray]:
    """Iso-surface of ``grid`` [R, R, R] (x, y, z; the density is high *inside*) at ``threshold`` (Lorensen & Cline
    1987, via PyMCubes). Returns verts [V, 3] float32 in world units and faces [F, 3] int64, wound so that normals
    point out of the dense region (towards decreasing density).

    The grid is padded with one layer of "outside" first, so that a solid the box cuts is closed by a flat cap on the
    box's face (within half a cell outside it) instead of left open there (marching cubes makes no surface across the
    grid's boundary): the mesh is always closed, whatever the box."""
    import mcubes

    box = _box(bound)
    grid = np.asarray(grid, dtype=np.float64)
    span = float(np.abs(grid - threshold).max()) if grid.size else 1.0
    # as far below the threshold as the grid's farthest value: a cap lies within half a cell outside the box (nearer
    # the box, its vertices from a box edge's two or three cube edges would nearly coincide: sliver triangles)
    padded = np.pad(grid, 1, mode="constant", constant_values=float(threshold) - max(span, 1e-12))
    verts, faces = mcubes.marching_cubes(padded, float(threshold))
    if len(faces) == 0:
        return np.zeros((0, 3), np.float32), np.zeros((0, 3), np.int64)
    scale = (box[1] - box[0]) / (np.asarray(grid.shape) - 1)
    verts = box[0] + (verts - 1.0) * scale
    # PyMCubes winds faces counter-clockwise around the outward normal when the field is high inside (checked on a
    # sphere in tests/test_export_mesh.py); keep that as the contract here.
    return verts.astype(np.float32), faces.astype(np.int64)


# ------------------------------------------------------------------------------------------------------------------
# Gaussians as a density field


def _quat_to_rotmat(quats: torch.Tensor) -> torch.Tensor:
    """[N, 4] (w, x, y, z), any norm → [N, 3, 3]."""
    w, x, y, z = torch.nn.functional.normalize(quats, dim=-1).unbind(-1)
    return torch.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ], -1).view(-1, 3, 3)


class GaussianField:
    """Density and colour of 3D Gaussians at arbitrary points, with spatial culling.

    density(x) = Σ_i o_i·exp(−½ (x−μ_i)ᵀ Σ_i⁻¹ (x−μ_i)) (DreamGaussian's mesh extraction), each Gaussian truncated at
    ``cutoff_sigma`` standard deviations (Mahalanobis distance); colour(x) = the density-weighted mean of the
    Gaussians' colours at x (the colour of the nearest Gaussian where no Gaussian reaches x).

    Culling, so the work is the number of (Gaussian, nearby sample) pairs, ``max_pairs`` at a time (bounded memory),
    with no Python loop over Gaussians:

    * :meth:`query` (arbitrary points): the points are hashed into a uniform cell grid; each Gaussian enumerates
      the cells of its axis-aligned ``cutoff_sigma`` box and the points in them.
    * :meth:`density_grid` (a regular grid, for marching cubes): each Gaussian splats into the block of grid samples
      inside its box, Gaussians grouped by block size; 10k Gaussians at 128³ take about 4 s of one CPU core. It
      keeps the colour sums, and :meth:`query_color` then interpolates them (fast texture baking).

    Args:
        means [N, 3], scales [N, 3] (activated, standard deviations), quats [N, 4] (w, x, y, z), opacities [N],
        colors [N, 3] in [0, 1].
    """

    def __init__(self, means: torch.Tensor, scales: torch.Tensor, quats: torch.Tensor, opacities: torch.Tensor,
                 colors: torch.Tensor, cutoff_sigma: float = 3.0, max_pairs: int = 1 << 22):
        self.means = means.detach().float().cpu()
        self.opacities = opacities.detach().float().reshape(-1).cpu()
        self.colors = colors.detach().float().reshape(-1, 3).cpu()
        scales = scales.detach().float().cpu().clamp_min(1e-7)
        R = _quat_to_rotmat(quats.detach().float().cpu())
        self.precision = (R / scales[:, None, :] ** 2) @ R.transpose(1, 2)  # Σ⁻¹ = R S⁻² Rᵀ, [N, 3, 3]
        cov = (R * scales[:, None, :] ** 2) @ R.transpose(1, 2)
        # Half-size of the axis-aligned box around the cutoff ellipsoid: k·sqrt(Σ_jj) along axis j.
        self.extent = cutoff_sigma * torch.sqrt(torch.diagonal(cov, dim1=1, dim2=2))
        self.cutoff2 = float(cutoff_sigma) ** 2
        self.max_pairs = int(max_pairs)
        self._tree = None
        self._grid: Optional[tuple[torch.Tensor, torch.Tensor]] = None

    @classmethod
    def from_model(cls, model: Any, **kw: Any) -> "GaussianField":
        """From a :class:`~dreamkit.representations.gaussians.GaussianModel` (colour = its degree-0 SH colour)."""
        sh0 = model.params["sh0"].detach().reshape(-1, 3)
        colors = (sh0 * 0.28209479177387814 + 0.5).clamp(0, 1)
        return cls(model.means, model.scales, model.quats, model.opacities, colors, **kw)

    #: the box below estimates where the Gaussians are (extract_mesh may grow it), it does not bound their domain
    mesh_bound_grows = True

    def mesh_bound(self, quantile: float = 0.999, margin: float = 0.05) -> np.ndarray:
        """[2, 3] box around the Gaussians: the ``quantile`` range of the means (stray Gaussians ignored) grown by
        the median Gaussian's cutoff extent and ``margin`` of the size, so the iso-surface is not clipped."""
        m = self.means.double()
        q = torch.tensor([1 - quantile, quantile], dtype=torch.float64)
        box = torch.quantile(m, q, dim=0) if len(m) > 1 else torch.stack([m[0], m[0]])
        pad = float(self.extent.median()) if len(m) else 0.0
        size = (box[1] - box[0]).max().item()
        box[0] -= pad + margin * size + 1e-3
        box[1] += pad + margin * size + 1e-3
        return box.numpy()

    @torch.no_grad()
    def density_grid(self, resolution: int, bound: Bound) -> np.ndarray:
        """The density on the R³ grid of :func:`density_grid` (same sample positions), computed by splatting.

        Each Gaussian covers the block of grid samples inside its cutoff box. Gaussians are grouped by block size
        (each axis rounded up to a size class, ≤ ~1.5× the need) so that a group is one dense [G, sx, sy, sz]
        evaluation: the quadratic form is built from per-axis terms by broadcasting, o·exp(−½ m) is scatter-added
        into the grid, ``max_pairs`` samples at a time. The density-weighted colour sums are splatted alongside
        and kept, so :meth:`query_color` can then interpolate them instead of evaluating every Gaussian again.

        Returns [R, R, R] float32 (x, y, z).
        """
        box = torch.as_tensor(_box(bound), dtype=torch.float32)
        R = int(resolution)
        h = (box[1] - box[0]) / (R - 1)
        acc = torch.zeros(R * R * R, 4)  # density, then Σ w·rgb
        i_lo = torch.ceil((self.means - self.extent - box[0]) / h).long().clamp(0, R - 1)
        i_hi = torch.floor((self.means + self.extent - box[0]) / h).long().clamp(-1, R - 1)
        size = (i_hi - i_lo + 1).clamp(min=0)  # [N, 3] samples per axis in the cutoff box
        alive = torch.nonzero((size > 0).all(1)).squeeze(1)
        classes = torch.tensor(sorted({int(round(1.5 ** k)) for k in range(0, 20)} | {R}))
        cls = torch.bucketize(size[alive], classes)  # index of the smallest class ≥ the need, per axis
        key = (cls[:, 0] * 64 + cls[:, 1]) * 64 + cls[:, 2]
        order = torch.argsort(key)
        alive, key = alive[order], key[order]
        uniq, counts = torch.unique_consecutive(key, return_counts=True)
        starts = (torch.cumsum(counts, 0) - counts).tolist()
        P = self.precision
        for k, start, count in zip(uniq.tolist(), starts, counts.tolist()):
            sx, sy, sz = (int(classes[k // 4096]), int(classes[(k // 64) % 64]), int(classes[k % 64]))
            step = max(1, self.max_pairs // (sx * sy * sz))
            for a in range(start, start + count, step):
                g = alive[a:min(a + step, start + count)]
                terms = []
                index = []
                for axis, n in enumerate((sx, sy, sz)):
                    i = i_lo[g, axis, None] + torch.arange(n)  # [G, n] sample indices along this axis
                    ok = i < (i_lo[g, axis, None] + size[g, axis, None])
                    d = box[0, axis] + i.clamp(max=R - 1) * h[axis] - self.means[g, axis, None]
                    terms.append((d, ok))
                    index.append(i.clamp(max=R - 1))
                (dx, okx), (dy, oky), (dz, okz) = terms
                dx, dy, dz = dx[:, :, None, None], dy[:, None, :, None], dz[:, None, None, :]
                p = P[g]
                pp = [p[:, 0, 0], p[:, 1, 1], p[:, 2, 2], 2 * p[:, 0, 1], 2 * p[:, 0, 2], 2 * p[:, 1, 2]]
                pp = [c[:, None, None, None] for c in pp]
                m = ((pp[0] * dx * dx + pp[3] * dx * dy) + (pp[1] * dy * dy + pp[5] * dy * dz)
                     + (pp[2] * dz * dz + pp[4] * dx * dz))  # [G, sx, sy, sz]
                ok = okx[:, :, None, None] & oky[:, None, :, None] & okz[:, None, None, :] & (m < self.cutoff2)
                w = torch.where(ok, torch.exp(-0.5 * m), torch.zeros_like(m)) * self.opacities[g, None, None, None]
                flat = ((index[0][:, :, None, None] * R + index[1][:, None, :, None]) * R
                        + index[2][:, None, None, :])
                w = w.reshape(len(g), -1)
                contrib = torch.cat([w[..., None], w[..., None] * self.colors[g, None, :]], -1)  # [G, s³, 4]
                acc.index_add_(0, flat.reshape(-1), contrib.reshape(-1, 4))
        grid = acc.view(R, R, R, 4)
        self._grid = (box, grid)
        return grid[..., 0].numpy()

    @torch.no_grad()
    def query(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """points [P, 3] → density [P] and the weighted colour sum [P, 3] (divide by density for the colour)."""
        pts = points.detach().float().cpu()
        P = pts.shape[0]
        density = torch.zeros(P)
        color_sum = torch.zeros(P, 3)
        if P == 0 or self.means.shape[0] == 0:
            return density, color_sum
        lo, hi = pts.min(0).values, pts.max(0).values
        # Gaussians whose cutoff box misses the points' bounding box are dropped before any pairing.
        near = ((self.means + self.extent >= lo) & (self.means - self.extent <= hi)).all(-1)
        gid = torch.nonzero(near).squeeze(1)
        if gid.numel() == 0:
            return density, color_sum
        mu, ext = self.means[gid], self.extent[gid]
        # Cell size: about half the typical cutoff box (few wasted points per box), no finer than the point
        # spacing, and coarse enough that the cell table stays below ~4M entries.
        span = (hi - lo).clamp_min(1e-6)
        spacing = float((span.prod() / P) ** (1 / 3))
        cell = max(0.5 * float(ext.max(1).values.median()), spacing, float((span.prod() / 4e6) ** (1 / 3)), 1e-6)
        dims = (torch.floor(span / cell).long() + 1)
        key = _cell_key(torch.floor((pts - lo) / cell).long().minimum(dims - 1), dims)
        order = torch.argsort(key)
        n_cells = int(dims.prod())
        counts = torch.bincount(key, minlength=n_cells)
        starts = torch.cumsum(counts, 0) - counts

        c_lo = torch.floor((mu - ext - lo) / cell).long().clamp(min=0).minimum(dims - 1)
        c_hi = torch.floor((mu + ext - lo) / cell).long().clamp(min=0).minimum(dims - 1)
        box = c_hi - c_lo + 1  # [G, 3] cells per axis
        cells_per_g = box.prod(1)
        # (Gaussian, cell) pairs.
        g_of = torch.repeat_interleave(torch.arange(len(gid)), cells_per_g)
        local = torch.arange(len(g_of)) - torch.repeat_interleave(torch.cumsum(cells_per_g, 0) - cells_per_g,
                                                                  cells_per_g)
        bx, by = box[g_of, 1] * box[g_of, 2], box[g_of, 2]
        cx = c_lo[g_of, 0] + local // bx
        cy = c_lo[g_of, 1] + (local % bx) // by
        cz = c_lo[g_of, 2] + local % by
        cell_id = (cx * dims[1] + cy) * dims[2] + cz
        n_pts = counts[cell_id]
        keep = n_pts > 0
        g_of, cell_id, n_pts = g_of[keep], cell_id[keep], n_pts[keep]
        # (Gaussian, point) pairs in chunks of about max_pairs.
        ends = torch.cumsum(n_pts, 0)
        chunk_of = torch.div(ends - n_pts, self.max_pairs, rounding_mode="floor")
        bounds = [0] + (torch.nonzero(torch.diff(chunk_of)).squeeze(1) + 1).tolist() + [len(n_pts)]
        for a, b in zip(bounds[:-1], bounds[1:]):
            if a == b:
                continue
            cnt = n_pts[a:b]
            g = torch.repeat_interleave(g_of[a:b], cnt)
            offset = torch.arange(int(cnt.sum())) - torch.repeat_interleave(torch.cumsum(cnt, 0) - cnt, cnt)
            p = order[torch.repeat_interleave(starts[cell_id[a:b]], cnt) + offset]
            d = pts[p] - mu[g]
            g_global = gid[g]
            m = torch.einsum("pi,pij,pj->p", d, self.precision[g_global], d)
            inside = m < self.cutoff2
            p, g_global, m = p[inside], g_global[inside], m[inside]
            w = self.opacities[g_global] * torch.exp(-0.5 * m)
            density.index_add_(0, p, w)
            color_sum.index_add_(0, p, w[:, None] * self.colors[g_global])
        return density, color_sum

    def _query_cached(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Like :meth:`query`, but trilinear in the grids of the last :meth:`density_grid` call when every point
        lies inside them (fast for the many texels of a bake; exact at the grid samples)."""
        if self._grid is None or len(points) == 0:
            return self.query(points)
        box, grid = self._grid
        if not bool(((points >= box[0]) & (points <= box[1])).all()):
            return self.query(points)
        # grid_sample on [1, 4, D=x, H=y, W=z]: its sample coordinates are ordered (W, H, D) = (z, y, x).
        coords = ((points - box[0]) / (box[1] - box[0]) * 2 - 1).flip(-1)
        out = torch.nn.functional.grid_sample(grid.permute(3, 0, 1, 2)[None], coords.view(1, -1, 1, 1, 3),
                                              mode="bilinear", align_corners=True)
        out = out.view(4, -1).T
        return out[:, 0], out[:, 1:]

    def query_density(self, points: torch.Tensor) -> torch.Tensor:
        """points [P, 3] → density [P]."""
        return self.query(points)[0]

    def query_color(self, points: torch.Tensor) -> torch.Tensor:
        """points [P, 3] → RGB [P, 3] in [0, 1]: density-weighted colour, nearest Gaussian's colour where the
        density vanishes."""
        density, color_sum = self._query_cached(points.detach().float().cpu())
        color = color_sum / density.clamp_min(1e-12)[:, None]
        empty = density < 1e-8
        if bool(empty.any()):
            if self._tree is None:
                from scipy.spatial import cKDTree

                self._tree = cKDTree(self.means.numpy())
            _, idx = self._tree.query(points.detach().float().cpu()[empty].numpy())
            color[empty] = self.colors[torch.as_tensor(idx, dtype=torch.long)]
        return color.clamp(0, 1)


def _cell_key(ijk: torch.Tensor, dims: torch.Tensor) -> torch.Tensor:
    return (ijk[:, 0] * dims[1] + ijk[:, 1]) * dims[2] + ijk[:, 2]


def field_from_representation(model: Any) -> Any:
    """A density field (``query_density`` / ``query_color``) for ``model``: the model itself when it has those
    methods, a :class:`GaussianField` for 3D Gaussians."""
    if hasattr(model, "query_density") and hasattr(model, "query_color"):
        return model
    if hasattr(model, "params") and all(k in model.params for k in ("means", "log_scales", "quats", "sh0")):
        return GaussianField.from_model(model)
    raise TypeError(f"{type(model).__name__} cannot be exported as a mesh: it has neither export_mesh(cfg) nor "
                    "query_density(points) + query_color(points)")


# ------------------------------------------------------------------------------------------------------------------
# the visible solid: the visual hull of the renders


def fibonacci_view_directions(n: int, max_elevation: float = 75.0) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` (elevation, azimuth) pairs in degrees spread evenly over the sphere (a Fibonacci lattice), elevations
    clamped to ±``max_elevation`` so that the +Y-up look-at frame stays defined."""
    i = torch.arange(n, dtype=torch.float64) + 0.5
    y = 1.0 - 2.0 * i / n
    elevation = torch.rad2deg(torch.asin(y)).clamp(-max_elevation, max_elevation)
    azimuth = torch.remainder(i * 180.0 * (3.0 - 5.0 ** 0.5), 360.0)  # golden angle steps
    return elevation.float(), azimuth.float()


def lattice_cameras(centre: torch.Tensor, radius: float, views: int, resolution: int, fovy: float = 40.0):
    """``views`` square cameras on a Fibonacci lattice (:func:`fibonacci_view_directions`) looking at ``centre``, far
    enough that a ball of ``radius`` around it is in every view, with a 5% margin."""
    from ..cameras import cameras_from_spherical

    distance = 1.05 * radius / float(np.sin(np.deg2rad(fovy / 2)))
    el, az = fibonacci_view_directions(views)
    return cameras_from_spherical(el, az, torch.full((views,), distance), torch.full((views,), float(fovy)),
                                  resolution, resolution, target=centre.expand(views, 3).clone())


def _project_to_image(points: torch.Tensor, w2c: torch.Tensor, K: torch.Tensor,
                      resolution: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """points [P, 3] → (camera z [P], grid_sample coordinates [1, 1, P, 2], inside the image and in front [P])."""
    pc = points @ w2c[:3, :3].T + w2c[:3, 3]
    z = pc[:, 2].clamp_min(1e-6)
    # pixel centres at integer + 0.5 (the renderers' convention) → grid_sample's normalised coordinates
    u = (K[0, 0] * pc[:, 0] / z + K[0, 2]) / resolution * 2 - 1
    w = (K[1, 1] * pc[:, 1] / z + K[1, 2]) / resolution * 2 - 1
    inside = (pc[:, 2] > 1e-6) & (u.abs() <= 1) & (w.abs() <= 1)
    return pc[:, 2], torch.stack([u, w], -1).view(1, 1, -1, 2), inside


class VisualHullField:
    """The solid a representation's renders show: its visual hull (Laurentini 1994), as a grid for marching cubes.

    ``views`` cameras (a Fibonacci lattice around the box, looking at its centre) render alpha; a grid point's value
    is the minimum over the views that contain it of ``alpha(pixel(x)) − alpha_threshold`` (alpha bilinearly
    interpolated, so the iso-surface at 0 is smooth). Positive = inside every silhouette. The result is solid and
    has no inner cavities or faint floaters; what it cannot show is a concavity that no silhouette reveals (the
    inside of a cup) — use ``mesh_method=density`` for those.

    Why: the density iso-surface of SDS-fitted Gaussians (:class:`GaussianField`) is porous — the Gaussians make an
    opaque *shell* in every render, but between them the summed density drops under any iso-level, so marching
    cubes returns inner cavities and tunnels that no render shows (measured on the world benchmark's spheres: twice
    the surface area of their convex hull). Its ``query_color`` is ``field``'s; :func:`mesh_from_representation`
    colours a hull export from the renders instead (:class:`RenderedColors`, ``export.mesh_color=auto``).
    """

    def __init__(self, model: Any, field: Any, views: int = 48, render_resolution: int = 128,
                 alpha_threshold: float = 0.5, fovy: float = 40.0, device: torch.device | str = "cpu"):
        self.model, self.field = model, field
        self.views, self.render_resolution = int(views), int(render_resolution)
        self.alpha_threshold, self.fovy = float(alpha_threshold), float(fovy)
        self.device = torch.device(device)

    #: the hull is defined everywhere (by the renders), so its box may grow past the field's
    mesh_bound_grows = True

    def mesh_bound(self):
        return self.field.mesh_bound() if hasattr(self.field, "mesh_bound") else 1.0

    def query_color(self, points: torch.Tensor) -> torch.Tensor:
        return self.field.query_color(points)

    @torch.no_grad()
    def density_grid(self, resolution: int, bound: Bound) -> np.ndarray:
        box = torch.as_tensor(_box(bound), dtype=torch.float32)
        n, R = self.views, self.render_resolution
        cams = lattice_cameras(box.mean(0), float((box[1] - box[0]).norm() / 2), n, R, self.fovy).to(self.device)
        points = grid_points(resolution, bound).reshape(-1, 3)
        value = torch.full((points.shape[0],), 1.0 - self.alpha_threshold)
        for v in range(n):
            cam = cams[v:v + 1]
            alpha = self.model.render(cam, background=torch.zeros(1, 3, device=self.device)).alpha
            alpha = alpha[0, ..., 0].float().cpu()
            # a grid point outside this image has no evidence from it
            _, grid, inside = _project_to_image(points, cam.viewmats[0].cpu(), cam.K[0].cpu(), R)
            sampled = torch.nn.functional.grid_sample(alpha[None, None], grid, mode="bilinear",
                                                      padding_mode="border", align_corners=False).view(-1)
            value = torch.where(inside, torch.minimum(value, sampled - self.alpha_threshold), value)
        return value.view(resolution, resolution, resolution).numpy()


class RenderedColors:
    """Surface colours as the representation's own renders show them: projective texturing (Segal et al. 1992, "Fast
    Shadows and Lighting Effects Using Texture Mapping") of ``views`` renders onto the exported mesh.

    Each render (a Fibonacci lattice of cameras around the mesh, black background, so its RGB is premultiplied by
    alpha) is projected onto the surface points that it sees: the mesh's own z-buffer (our rasterizer) decides
    visibility, so the back of the object and the far side of a concavity take nothing from a view. A point's colour
    is Σ f·rgb / Σ f·alpha over those views, f = max(0, n·to_camera)^sharpness from the nearest vertex's normal n:
    the views facing the surface dominate (with 48 views one is within ~15° of any normal; cos⁸ 15° = 0.76,
    cos⁸ 45° = 0.06), since oblique views see a small feature partly hidden behind its neighbours. Points no render
    sees (inside a cup) fall back to ``fallback`` (the field's colour).

    Why: the field's colour at a surface point is the density-weighted colour of every Gaussian overlapping it, the
    hidden interior ones included, so small front features (a door, a carrot nose) that every render shows are
    blurred or lost on the export; renders composite front to back and keep them.
    """

    def __init__(self, model: Any, mesh: Mesh, fallback: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
                 views: int = 48, render_resolution: int = 128, fovy: float = 40.0,
                 device: torch.device | str = "cpu", depth_tolerance: float = 0.02, sharpness: float = 8.0):
        from scipy.spatial import cKDTree

        from ..render.raster import rasterize_mesh

        self.fallback, self.sharpness = fallback, float(sharpness)
        device = torch.device(device)
        verts = torch.as_tensor(np.asarray(mesh.verts), dtype=torch.float32)
        faces = torch.as_tensor(np.asarray(mesh.faces), dtype=torch.long)
        lo, hi = verts.min(0).values, verts.max(0).values
        radius = float((hi - lo).norm() / 2)
        n, R = int(views), int(render_resolution)
        cams = lattice_cameras((lo + hi) / 2, radius, n, R, fovy)
        rgba, zbuf = [], []
        with torch.no_grad():
            for v in range(n):
                out = model.render(cams[v:v + 1].to(device), background=torch.zeros(1, 3, device=device))
                rgba.append(torch.cat([out.rgb[0], out.alpha[0]], -1).float().cpu().permute(2, 0, 1))
                frags = rasterize_mesh(verts, faces, cams.viewmats[v:v + 1], cams.K[v:v + 1], R, R)
                z = torch.where(frags.face_id[0] >= 0, frags.depth[0].detach(), torch.full_like(frags.depth[0], 1e6))
                # lenient at silhouettes and across pixel quantisation: the nearest depth in a 3×3 neighbourhood
                z = -torch.nn.functional.max_pool2d(-z[None, None], 3, stride=1, padding=1)[0]
                zbuf.append(z)
        self.rgba = torch.stack(rgba)  # [V, 4, R, R]: premultiplied RGB, alpha
        self.zbuf = torch.stack(zbuf)  # [V, 1, R, R]: camera z of the mesh's visible surface (1e6 where empty)
        self.viewmats, self.K, self.R = cams.viewmats.float(), cams.K.float(), R
        self.centres = cams.c2w[:, :3, 3].float()
        self.tolerance = float(depth_tolerance) * 2 * radius
        normals = mesh.normals
        if normals is None:
            normals = vertex_normals(np.asarray(mesh.verts), np.asarray(mesh.faces))
        self.normals = torch.as_tensor(np.asarray(normals), dtype=torch.float32)
        self._tree = cKDTree(np.asarray(mesh.verts))

    def _accumulate(self, p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        _, idx = self._tree.query(p.numpy())
        nrm = self.normals[torch.as_tensor(idx, dtype=torch.long)]
        num, den = torch.zeros(len(p), 3), torch.zeros(len(p))
        for v in range(len(self.rgba)):
            z, grid, inside = _project_to_image(p, self.viewmats[v], self.K[v], self.R)
            rgba = torch.nn.functional.grid_sample(self.rgba[v:v + 1], grid, mode="bilinear", padding_mode="zeros",
                                                   align_corners=False).view(4, -1)
            zb = torch.nn.functional.grid_sample(self.zbuf[v:v + 1], grid, mode="nearest", padding_mode="border",
                                                 align_corners=False).view(-1)
            seen = inside & (z <= zb + self.tolerance)
            to_cam = torch.nn.functional.normalize(self.centres[v] - p, dim=-1)
            f = (nrm * to_cam).sum(-1).clamp_min(0) ** self.sharpness * seen
            num += f[:, None] * rgba[:3].T
            den += f * rgba[3]
        return num, den

    def __call__(self, points: torch.Tensor) -> torch.Tensor:
        """points [P, 3] → RGB [P, 3] in [0, 1]."""
        p = points.detach().float().cpu()
        num, den = self._accumulate(p)
        color = num / den.clamp_min(1e-6)[:, None]
        unseen = den < 1e-3
        if unseen.any():
            if self.fallback is None:
                color[unseen] = 0.5
            else:
                color[unseen] = self.fallback(p[unseen]).float().cpu()
        return color.clamp(0, 1)


# ------------------------------------------------------------------------------------------------------------------
# cleanup


def keep_largest_components(verts: np.ndarray, faces: np.ndarray, keep: int = 1,
                            min_fraction: float = 0.0, min_of_largest: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Keep the ``keep`` connected components with the most faces (0 = all), dropping any with fewer than
    ``min_fraction`` of all the faces or fewer than ``min_of_largest`` times the largest component's faces; unused
    vertices are removed. Components: vertices joined by face edges (scipy's connected_components on the vertex
    graph)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    if len(faces) == 0:
        return verts, faces
    V = len(verts)
    edges = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]]])
    graph = coo_matrix((np.ones(len(edges), dtype=np.int8), (edges[:, 0], edges[:, 1])), shape=(V, V))
    _, labels = connected_components(graph, directed=False)
    face_label = labels[faces[:, 0]]
    sizes = np.bincount(face_label)
    ranked = np.argsort(-sizes, kind="stable")
    if keep > 0:
        ranked = ranked[:keep]
    ranked = ranked[(sizes[ranked] >= min_fraction * len(faces)) & (sizes[ranked] >= min_of_largest * sizes.max())]
    faces = faces[np.isin(face_label, ranked)]
    return _compact(verts, faces)


def _compact(verts: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    used = np.unique(faces)
    remap = np.full(len(verts), -1, dtype=np.int64)
    remap[used] = np.arange(len(used))
    return verts[used], remap[faces]


def decimate(verts: np.ndarray, faces: np.ndarray, max_faces: int) -> tuple[np.ndarray, np.ndarray]:
    """Quadric edge-collapse decimation (Garland & Heckbert 1997) to at most about ``max_faces`` faces, by
    fast-simplification (the library behind trimesh's ``simplify_quadric_decimation``). No-op when already small."""
    if max_faces <= 0 or len(faces) <= max_faces:
        return verts, faces
    import fast_simplification

    reduction = 1.0 - max_faces / len(faces)
    v, f = fast_simplification.simplify(verts.astype(np.float32), faces.astype(np.int64), target_reduction=reduction)
    # Collapses can leave degenerate faces; drop them and unused vertices.
    f = np.asarray(f, dtype=np.int64)
    good = (f[:, 0] != f[:, 1]) & (f[:, 1] != f[:, 2]) & (f[:, 0] != f[:, 2])
    return _compact(np.asarray(v, dtype=np.float32), f[good])


# ------------------------------------------------------------------------------------------------------------------
# the pipeline


#: how many times, and by how much, :func:`extract_mesh` grows a field's own box that cuts the solid
GROW_BOUND_TRIES = 3
GROW_BOUND_FACTOR = 1.25


def _touches_boundary(grid: np.ndarray, threshold: float) -> bool:
    """Whether the solid (grid ≥ threshold) reaches any face of the grid."""
    faces = (grid[0], grid[-1], grid[:, 0], grid[:, -1], grid[:, :, 0], grid[:, :, -1])
    return any(bool((f >= threshold).any()) for f in faces)


@torch.no_grad()
def extract_mesh(field: Any, resolution: int = 128, threshold: float = 1.0, bound: Optional[Bound] = None,
                 keep_components: int = 1, min_component_fraction: float = 0.0, max_faces: int = 20000,
                 chunk: int = 1 << 18, min_of_largest: float = 0.0) -> Mesh:
    """Field → density grid → marching cubes → largest components → decimation → normals and vertex colours.

    Args:
        field: has ``query_density(points [N,3]) -> [N]``, ``query_color(points [N,3]) -> [N,3]`` and optionally
            ``mesh_bound() -> [2, 3]`` (used when ``bound`` is None; grown ×1.25 up to three times while the solid
            reaches its faces when the field says that its box is an estimate, ``mesh_bound_grows = True``: the
            Gaussians' field and the visual hull, not a NeRF's AABB, outside which it has no density).
        resolution: grid samples per axis; threshold: the iso-level of the density.
        keep_components: keep the N largest connected components (0 = all), none smaller than ``min_of_largest``
            times the largest; max_faces: decimation budget (0 = none).

    Raises ValueError when the iso-surface is empty (nothing in the field reaches ``threshold``).
    """
    # only a box that estimates where the solid is may grow; a field's domain (a NeRF's AABB) may not
    growable = bound is None and hasattr(field, "mesh_bound") and bool(getattr(field, "mesh_bound_grows", False))
    if bound is None:
        bound = field.mesh_bound() if hasattr(field, "mesh_bound") else 1.0
    for attempt in range(GROW_BOUND_TRIES + 1):
        if hasattr(field, "density_grid"):  # a field's own (faster) grid evaluation, e.g. GaussianField's splatting
            grid = field.density_grid(resolution, bound)
        else:
            grid = density_grid(field.query_density, resolution, bound, chunk=chunk)
        # a box of the field's own choosing that cuts the solid (a visual hull reaches past the Gaussians' means
        # box where the splats are large) is grown about its centre and the grid taken again; a box the caller
        # gave is kept, and the cut solid closed with a cap by marching_cubes
        if not growable or attempt == GROW_BOUND_TRIES or not _touches_boundary(grid, threshold):
            break
        box = _box(bound)
        centre, half = box.mean(0), (box[1] - box[0]) / 2 * GROW_BOUND_FACTOR
        bound = np.stack([centre - half, centre + half])
    verts, faces = marching_cubes(grid, threshold, bound)
    if len(faces) == 0:
        raise EmptyExport(f"nothing to export: the density never reaches export.mesh_threshold={threshold} "
                          f"(max {float(grid.max()):.3g}) — lower export.mesh_threshold, or check the run's renders "
                          "(a fit can end empty)")
    verts, faces = keep_largest_components(verts, faces, keep_components, min_component_fraction, min_of_largest)
    verts, faces = decimate(verts, faces, max_faces)
    colors = field.query_color(torch.as_tensor(verts)).float().numpy()
    return Mesh(verts=verts, faces=faces, normals=vertex_normals(verts, faces), vertex_colors=colors)


def check_mesh_options(cfg: Any) -> None:
    """The ``export.mesh_color`` / ``mesh_method`` / ``mesh_hull_alpha`` choices (ConfigError naming the key); called
    by the exporters and, through ``dreamkit.config``, before a fit starts."""
    source = str(getattr(cfg, "mesh_color", "auto"))
    if source not in ("auto", "renders", "field"):
        raise ConfigError(f"export.mesh_color={source!r}: use 'renders' (projected from the representation's renders), "
                          "'field' (the field's colour at the surface) or 'auto' (renders with mesh_method=hull)")
    method = str(getattr(cfg, "mesh_method", "density"))
    if method not in ("density", "hull"):
        raise ConfigError(f"export.mesh_method={method!r}: use 'density' (iso-surface of the density field) or "
                          "'hull' (the visual hull of the representation's renders: solid, no inner cavities)")
    alpha = float(getattr(cfg, "mesh_hull_alpha", 0.5))
    if not 0.0 < alpha < 1.0:
        raise ConfigError(f"export.mesh_hull_alpha={alpha}: use a value between 0 and 1 (0.5 by default)")
    hull_resolution = int(getattr(cfg, "mesh_hull_resolution", 0))
    if hull_resolution < 0 or 0 < hull_resolution < 8:
        raise ConfigError(f"export.mesh_hull_resolution={hull_resolution}: use a render size in pixels (≥ 8), or 0 "
                          "for export.mesh_resolution")


def mesh_from_representation(model: Any, export_cfg: Any = None) -> tuple[Mesh, Optional[Callable]]:
    """The export protocol: ``model.export_mesh(export_cfg)`` when the representation has it, else marching cubes
    on its density field (:func:`field_from_representation`) with the ``export.mesh_*`` settings.

    Returns the mesh and a colour function (points [N, 3] tensor → [N, 3]) for texture baking, or None when the
    mesh's own vertex colours are the best colour source.
    """
    if hasattr(model, "export_mesh"):
        return model.export_mesh(export_cfg), getattr(model, "query_color", None)
    field = field_from_representation(model)
    cfg = export_cfg
    bound = None
    if cfg is not None and float(getattr(cfg, "mesh_bound", 0.0)) > 0:
        bound = float(cfg.mesh_bound)
    method = str(getattr(cfg, "mesh_method", "density"))
    threshold = float(getattr(cfg, "mesh_threshold", 1.0))
    device = next(iter(model.parameters())).device if hasattr(model, "parameters") else "cpu"
    source = str(getattr(cfg, "mesh_color", "auto"))
    check_mesh_options(cfg)  # before the (slow) extraction
    if method == "hull":
        alpha = float(getattr(cfg, "mesh_hull_alpha", 0.5))
        hull_resolution = int(getattr(cfg, "mesh_hull_resolution", 0)) or int(getattr(cfg, "mesh_resolution", 128))
        field = VisualHullField(model, field, views=int(getattr(cfg, "mesh_views", 48)),
                                render_resolution=hull_resolution, alpha_threshold=alpha, device=device)
        threshold = 0.0
    mesh = extract_mesh(
        field,
        resolution=int(getattr(cfg, "mesh_resolution", 128)),
        threshold=threshold,
        bound=bound,
        keep_components=int(getattr(cfg, "mesh_components", 1)),
        max_faces=int(getattr(cfg, "mesh_faces", 20000)),
        min_of_largest=float(getattr(cfg, "mesh_component_min", 0.0)),
    )
    if source == "renders" or (source == "auto" and method == "hull"):
        colors = RenderedColors(model, mesh, fallback=field.query_color, views=int(getattr(cfg, "mesh_views", 48)),
                                render_resolution=int(getattr(cfg, "mesh_resolution", 128)), device=device)
        mesh.vertex_colors = colors(torch.as_tensor(mesh.verts)).numpy()
        return mesh, colors
    return mesh, field.query_color

