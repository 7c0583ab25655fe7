"""The torch rasterizer against independent references (brute-force point-in-triangle, analytic ray casts)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from dreamkit.cameras import cameras_from_spherical
from dreamkit.render.raster import antialias, interpolate, rasterize_mesh, render_mesh_colors
from dreamkit.world.meshes import load_colored_mesh

W = H = 32


def pinhole(focal=30.0, width=W, height=H, dtype=torch.float64):
    """One camera at the origin looking along +z (viewmat = identity), principal point at the image centre."""
    K = torch.tensor([[focal, 0, width / 2], [0, focal, height / 2], [0, 0, 1]], dtype=dtype)[None]
    return torch.eye(4, dtype=dtype)[None], K


def pixel_rays(K: np.ndarray, width: int, height: int) -> np.ndarray:
    """[H, W, 3] camera-space directions through the pixel centres, with z = 1."""
    ys, xs = np.mgrid[0:height, 0:width] + 0.5
    pix = np.stack([xs, ys, np.ones_like(xs)], -1)
    return pix @ np.linalg.inv(K).T


def brute_force_triangle(tri_cam: np.ndarray, K: np.ndarray, width: int, height: int):
    """Per pixel, independently of the rasterizer: ray-plane hit, inside test by barycentric solve in 3D.

    Returns coverage [H, W] bool, depth [H, W] (the analytic plane depth), and the min |barycentric| [H, W] (how far
    inside the pixel centre lies, to skip edge pixels whose classification is a matter of rounding)."""
    rays = pixel_rays(K, width, height)
    a, b, c = tri_cam
    n = np.cross(b - a, c - a)
    t = (n @ a) / (rays @ n)  # ray (t·d) meets the triangle's plane; d_z = 1 so t is the depth
    hit = rays * t[..., None]
    # Barycentrics of the hit point: solve hit = a + u (b - a) + v (c - a) in least squares.
    M = np.stack([b - a, c - a], 1)  # [3, 2]
    uv = (hit - a) @ np.linalg.pinv(M).T
    bary = np.stack([1 - uv[..., 0] - uv[..., 1], uv[..., 0], uv[..., 1]], -1)
    return (bary >= 0).all(-1) & (t > 0), t, np.abs(bary).min(-1), bary


def test_single_triangle_coverage_and_depth_match_brute_force():
    rng = np.random.default_rng(0)
    viewmat, K = pinhole()
    for trial in range(5):
        # A random triangle in front of the camera, tilted (varying depth) and partly outside the image.
        z = rng.uniform(1.5, 3.0, 3)
        xy = np.array([[-0.6, -0.5], [0.7, -0.2], [0.0, 0.75]]) + rng.uniform(-0.25, 0.25, (3, 2))
        tri = np.column_stack([xy * z[:, None], z])[rng.permutation(3)]  # either winding
        verts = torch.tensor(tri)
        faces = torch.tensor([[0, 1, 2]])
        frags = rasterize_mesh(verts, faces, viewmat, K, W, H)
        covered, depth, margin, bary = brute_force_triangle(tri, K[0].numpy(), W, H)
        clear = margin > 2e-3  # pixel centres off the edges (vertices are snapped to 1/256 px)
        got = (frags.face_id[0] == 0).numpy()
        assert covered.sum() > 10
        np.testing.assert_array_equal(got[clear], covered[clear])
        np.testing.assert_allclose(frags.depth[0].numpy()[covered], depth[covered], rtol=1e-9)
        np.testing.assert_allclose(frags.bary[0].numpy()[covered], bary[covered], atol=1e-9)
        assert (frags.depth[0].numpy()[~got] == 0).all()
        assert (frags.face_id[0][torch.from_numpy(~got)] == -1).all()


def cube(half=0.5, dtype=torch.float64):
    import trimesh

    box = trimesh.creation.box(extents=(2 * half,) * 3)
    return torch.tensor(box.vertices, dtype=dtype), torch.tensor(box.faces)


def ray_box(origin: np.ndarray, dirs: np.ndarray, half: float):
    """Slab-method ray/axis-aligned-box hits: (hit [N] bool, t_near [N])."""
    with np.errstate(divide="ignore", invalid="ignore"):
        t1 = (-half - origin) / dirs
        t2 = (half - origin) / dirs
    t_near = np.nanmax(np.minimum(t1, t2), -1)
    t_far = np.nanmin(np.maximum(t1, t2), -1)
    return (t_near <= t_far) & (t_far > 0), t_near, t_far


@pytest.mark.parametrize("azimuth,elevation", [(30.0, 20.0), (-110.0, -35.0), (0.0, 0.0)])
def test_cube_matches_ray_casting(azimuth, elevation):
    verts, faces = cube()
    cams = cameras_from_spherical(torch.tensor([elevation]), torch.tensor([azimuth]), torch.tensor([2.5]),
                                  torch.tensor([45.0]), 48, 40)
    cams = cams.to(torch.device("cpu"))
    c2w = cams.c2w.double()
    frags = rasterize_mesh(verts, faces, torch.linalg.inv(c2w), cams.K.double(), 48, 40)
    # Independent reference: world-space rays through pixel centres against the box.
    dirs_cam = pixel_rays(cams.K[0].double().numpy(), 48, 40).reshape(-1, 3)
    R, origin = c2w[0, :3, :3].numpy(), c2w[0, :3, 3].numpy()
    dirs = dirs_cam @ R.T
    hit, t_near, _ = ray_box(origin, dirs, 0.5)
    # Pixels hit by a slightly smaller box must be covered, pixels missed by a slightly larger one must not (the
    # margin absorbs the rasterizer's 1/256-px snapping at the silhouette).
    hit_inner = ray_box(origin, dirs, 0.5 - 1e-3)[0]
    hit_outer = ray_box(origin, dirs, 0.5 + 1e-3)[0]
    got = (frags.face_id[0] >= 0).numpy().reshape(-1)
    assert hit_inner.sum() > 100
    assert got[hit_inner].all()
    assert not got[~hit_outer].any()
    # depth = t along a direction whose camera z is 1
    np.testing.assert_allclose(frags.depth[0].numpy().reshape(-1)[hit_inner], t_near[hit_inner], rtol=1e-9)


def test_closed_mesh_is_watertight_and_culling_agrees():
    """No cracks along shared edges: a cube seen face-on covers a solid square; culling back faces changes
    nothing for a closed, outward-wound mesh."""
    verts, faces = cube()
    cams = cameras_from_spherical(torch.tensor([35.0, 0.0, -60.0]), torch.tensor([40.0, 0.0, 170.0]),
                                  torch.tensor([3.0, 3.0, 2.0]), torch.tensor([40.0, 40.0, 60.0]), 64, 64)
    a = rasterize_mesh(verts, faces, cams.viewmats.double(), cams.K.double(), 64, 64)
    b = rasterize_mesh(verts, faces, cams.viewmats.double(), cams.K.double(), 64, 64, cull_backfaces=True)
    torch.testing.assert_close(a.depth, b.depth)
    assert torch.equal(a.mask, b.mask)
    # Face-on view (camera 1): the square's interior has no holes, i.e. every row of the mask is one run.
    mask = a.mask[1]
    for row in mask[mask.any(1)]:
        idx = torch.nonzero(row).squeeze(1)
        assert idx.max() - idx.min() + 1 == idx.numel()


def test_batch_chunking_and_determinism():
    verts, faces, colors = load_colored_mesh("meshes/house.ply")
    cams = cameras_from_spherical(torch.tensor([10.0, 30.0, -5.0]), torch.tensor([0.0, 135.0, -60.0]),
                                  torch.full((3,), 2.5), torch.full((3,), 40.0), 40, 40)
    full = rasterize_mesh(verts, faces, cams.viewmats, cams.K, 40, 40)
    tiny_chunks = rasterize_mesh(verts, faces, cams.viewmats, cams.K, 40, 40, max_pairs=97)
    assert torch.equal(full.face_id, tiny_chunks.face_id)
    for i in range(3):
        one = rasterize_mesh(verts, faces, cams.viewmats[i:i + 1], cams.K[i:i + 1], 40, 40)
        assert torch.equal(one.face_id[0], full.face_id[i])
        torch.testing.assert_close(one.depth[0], full.depth[i])


def test_interpolate_reproduces_vertex_attributes_at_vertices():
    viewmat, K = pinhole()
    # Put each vertex on the ray through a pixel centre: its pixel must interpolate to exactly its attribute.
    centres = [(8.5, 9.5, 2.0), (25.5, 12.5, 3.0), (14.5, 27.5, 2.5)]
    Kinv = torch.linalg.inv(K[0])
    verts = torch.stack([Kinv @ torch.tensor([x, y, 1.0], dtype=torch.float64) * z for x, y, z in centres])
    faces = torch.tensor([[0, 1, 2]])
    attr = torch.tensor([[1.0, -2.0], [3.0, 0.5], [-1.0, 4.0]], dtype=torch.float64)
    frags = rasterize_mesh(verts, faces, viewmat, K, W, H)
    out = interpolate(attr, frags)
    for i, (x, y, z) in enumerate(centres):
        px, py = int(x), int(y)
        assert frags.face_id[0, py, px] == 0
        torch.testing.assert_close(out[0, py, px], attr[i], atol=1e-9, rtol=0)
        torch.testing.assert_close(frags.depth[0, py, px], torch.tensor(z, dtype=torch.float64))
    # Perspective correctness: interpolated positions lie on each pixel's ray at the pixel's depth.
    points = interpolate(verts, frags)[0][frags.mask[0]]
    proj = points @ K[0].T
    ys, xs = torch.nonzero(frags.mask[0], as_tuple=True)
    torch.testing.assert_close(proj[:, 0] / proj[:, 2], xs.double() + 0.5)
    torch.testing.assert_close(proj[:, 1] / proj[:, 2], ys.double() + 0.5)
    torch.testing.assert_close(points[:, 2], frags.depth[0][frags.mask[0]])
    # Face-varying attributes [F, 3, C] give the same result.
    torch.testing.assert_close(interpolate(attr[faces], frags), out)


def test_interpolate_gradient_wrt_vertices_matches_finite_differences():
    viewmat, K = pinhole()
    verts0 = torch.tensor([[-0.6, -0.5, 2.0], [0.7, -0.3, 2.6], [0.1, 0.8, 2.3]], dtype=torch.float64)
    faces = torch.tensor([[0, 1, 2]])
    attr = torch.tensor([[1.0, 0.2], [-0.5, 2.0], [0.3, -1.0]], dtype=torch.float64)
    py, px = 15, 16  # an interior pixel
    weights = torch.tensor([0.7, -1.3], dtype=torch.float64)

    def value(verts):
        frags = rasterize_mesh(verts, faces, viewmat, K, W, H)
        assert frags.face_id[0, py, px] == 0
        return (interpolate(attr, frags)[0, py, px] * weights).sum() + 0.5 * frags.depth[0, py, px]

    verts = verts0.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(value(verts), verts)
    fd = torch.zeros_like(verts0)
    h = 1e-6
    for i in range(3):
        for j in range(3):
            dv = torch.zeros_like(verts0)
            dv[i, j] = h
            fd[i, j] = (value(verts0 + dv) - value(verts0 - dv)) / (2 * h)
    assert grad.abs().max() > 1e-3
    torch.testing.assert_close(grad, fd, atol=1e-6, rtol=1e-5)


def house_part_faces(colors: torch.Tensor, rgb8: tuple[int, int, int]) -> torch.Tensor:
    return torch.nonzero(((colors * 255).round() == torch.tensor(rgb8, dtype=colors.dtype)).all(-1)).squeeze(1)


def test_house_orientation_front_is_plus_z_and_image_is_not_mirrored():
    verts, faces, colors = load_colored_mesh("meshes/house.ply")
    door = house_part_faces(colors, (90, 50, 25))
    window = house_part_faces(colors, (110, 185, 240))
    chimney = house_part_faces(colors, (100, 105, 130))
    assert door.numel() and window.numel() and chimney.numel()
    size = 64
    cams = cameras_from_spherical(torch.tensor([10.0, 10.0, 10.0]), torch.tensor([0.0, 180.0, 90.0]),
                                  torch.full((3,), 2.5), torch.full((3,), 40.0), size, size)
    frags = rasterize_mesh(verts, faces, cams.viewmats, cams.K, size, size)
    fid = frags.face_id
    is_door = torch.isin(fid, door)
    is_window = torch.isin(fid, window)
    is_chimney = torch.isin(fid, chimney)
    cols = torch.arange(size, dtype=torch.float32)
    # Front (azimuth 0): the door is visible, left of centre; the window and the chimney (+X) are on the right.
    assert is_door[0].sum() > 20
    assert (is_door[0].float() * cols).sum() / is_door[0].sum() < size / 2
    assert (is_window[0].float() * cols).sum() / is_window[0].sum() > size / 2
    assert (is_chimney[0].float() * cols).sum() / is_chimney[0].sum() > size / 2
    # Back (azimuth 180): no door; the chimney (+X) is now on the left.
    assert is_door[1].sum() == 0
    assert (is_chimney[1].float() * cols).sum() / is_chimney[1].sum() < size / 2
    # +X side (azimuth 90): the side window faces the camera, the door does not.
    assert is_window[2].sum() > 20
    # Image rows: y down, so the chimney (top of the house) is in the upper half.
    rows = cols[:, None]
    assert (is_chimney[0].float() * rows).sum() / is_chimney[0].sum() < size / 2


def test_render_mesh_colors_shading_background_and_ssaa():
    verts, faces, colors = load_colored_mesh("meshes/house.ply")
    cams = cameras_from_spherical(torch.tensor([15.0, 15.0]), torch.tensor([20.0, -70.0]), torch.full((2,), 2.5),
                                  torch.full((2,), 40.0), 48, 48)
    rgb, alpha, depth = render_mesh_colors(verts, faces, cams, face_colors=colors, background=(0.0, 0.5, 1.0))
    assert rgb.shape == (2, 48, 48, 3) and alpha.shape == depth.shape == (2, 48, 48, 1)
    assert set(alpha.unique().tolist()) == {0.0, 1.0}
    empty = alpha[..., 0] == 0
    torch.testing.assert_close(rgb[empty], torch.tensor([0.0, 0.5, 1.0]).expand(int(empty.sum()), 3))
    assert (depth[empty] == 0).all() and (depth[~empty] > 1).all()
    # A fixed world light: a face has the same colour in every view where it is visible.
    frags = rasterize_mesh(verts, faces, cams.viewmats, cams.K, 48, 48)
    common = set(frags.face_id[0].unique().tolist()) & set(frags.face_id[1].unique().tolist()) - {-1}
    assert common
    for f in common:
        c0 = rgb[0][frags.face_id[0] == f]
        c1 = rgb[1][frags.face_id[1] == f]
        torch.testing.assert_close(c0, c0[:1].expand_as(c0))
        torch.testing.assert_close(c1[:1], c0[:1])
    # Supersampling: same size, fractional coverage at the edges, agreeing with a 2x render pooled by hand.
    rgb2, alpha2, depth2 = render_mesh_colors(verts, faces, cams, face_colors=colors, ssaa=2)
    big_rgb, big_alpha, _ = render_mesh_colors(verts, faces, cams.with_resolution(96, 96), face_colors=colors)
    assert rgb2.shape == (2, 48, 48, 3)
    assert ((alpha2 > 0) & (alpha2 < 1)).any()
    pooled = torch.nn.functional.avg_pool2d(big_rgb.permute(0, 3, 1, 2), 2).permute(0, 2, 3, 1)
    torch.testing.assert_close(rgb2, pooled)
    # Gradients reach the colours and, through interior pixels, the vertices.
    verts_g = verts.clone().requires_grad_(True)
    colors_g = colors.clone().requires_grad_(True)
    rgb3, _, _ = render_mesh_colors(verts_g, faces, cams, vertex_colors=None, face_colors=colors_g)
    rgb3.sum().backward()
    assert colors_g.grad.abs().sum() > 0 and verts_g.grad.abs().sum() > 0
    # Vertex colours equal to the face colours (split vertices) render the same image.
    vcol = torch.zeros(len(verts), 3)
    vcol[faces.reshape(-1)] = colors.repeat_interleave(3, 0)
    rgb4, _, _ = render_mesh_colors(verts, faces, cams, vertex_colors=vcol, background=(0.0, 0.5, 1.0))
    torch.testing.assert_close(rgb4, rgb)


def test_house_asset_is_in_sync_centred_and_flat_coloured(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    from dreamkit.assets import asset_path
    from dreamkit.errors import DreamkitError

    shipped = asset_path("meshes/house.ply")
    script = Path(__file__).resolve().parents[1] / "scripts" / "make_assets.py"
    subprocess.run([sys.executable, str(script), "--out", str(tmp_path)], check=True, capture_output=True)
    assert (tmp_path / "house.ply").read_bytes() == shipped.read_bytes(), "rerun scripts/make_assets.py"

    verts, faces, colors = load_colored_mesh(shipped)
    assert faces.shape[0] <= 2000 and verts.dtype == torch.float32 and faces.dtype == torch.long
    assert verts.norm(dim=1).max() <= 0.7
    torch.testing.assert_close((verts.amin(0) + verts.amax(0)) / 2, torch.zeros(3), atol=1e-5, rtol=0)
    assert len(torch.unique((colors * 255).round(), dim=0)) == 5
    # Flat colours: every face's three vertex colours are equal, so the face colour is exactly 8-bit.
    torch.testing.assert_close(colors * 255, (colors * 255).round(), atol=1e-4, rtol=0)
    with pytest.raises(DreamkitError, match="house.ply"):
        asset_path("meshes/no_such_mesh.ply")


# --- antialiasing (silhouette gradients) against analytic coverage ------------------------------------------------

def analytic_coverage(tri_px: np.ndarray, width: int = W, height: int = H, n: int = 1024) -> np.ndarray:
    """[H, W] exact-to-~1e-6 area coverage of a screen triangle, independently of the rasterizer: per pixel row,
    the covered x-interval of n horizontal lines (midpoint rule in y) overlapped with each pixel's x-range."""
    tri = np.asarray(tri_px, dtype=np.float64)
    ys = (np.arange(height * n) + 0.5) / n
    p, q = tri, tri[[1, 2, 0]]
    with np.errstate(divide="ignore", invalid="ignore"):
        t = (ys[:, None] - p[None, :, 1]) / (q[None, :, 1] - p[None, :, 1])
        x = p[None, :, 0] + t * (q[None, :, 0] - p[None, :, 0])
    ok = (t >= 0) & (t <= 1) & np.isfinite(t)
    left = np.where(ok, x, np.inf).min(1)
    right = np.where(ok, x, -np.inf).max(1)
    cols = np.arange(width)
    overlap = np.clip(np.minimum(cols[None] + 1, right[:, None]) - np.maximum(cols[None], left[:, None]), 0, None)
    return overlap.reshape(height, n, width).mean(1)


def project_np(verts: np.ndarray, K: torch.Tensor) -> np.ndarray:
    uvw = np.asarray(verts) @ K[0].numpy().T
    return uvw[:, :2] / uvw[:, 2:]


# A tilted triangle whose vertices are off the pixel centres; edges of all slopes.
TRI = torch.tensor([[-0.55, -0.4, 2.0], [0.613, -0.21, 2.4], [-0.1, 0.65, 2.2]], dtype=torch.float64)


def aa_coverage(verts, faces, viewmat, K):
    frags = rasterize_mesh(verts, faces, viewmat, K, W, H)
    return antialias(frags.mask.to(verts.dtype)[..., None], frags, verts, viewmat, K)[0, ..., 0], frags


def test_antialias_coverage_matches_analytic_area():
    viewmat, K = pinhole()
    faces = torch.tensor([[0, 1, 2]])
    aa, frags = aa_coverage(TRI, faces, viewmat, K)
    ref = analytic_coverage(project_np(TRI.numpy(), K))
    err = np.abs(aa.numpy() - ref)
    err_point = np.abs(frags.mask[0].double().numpy() - ref)
    # Exact for straight edges away from the corners (the row/column an edge crosses gets its exact area).
    assert err.mean() < 2e-3 and err.max() < 0.12, (err.mean(), err.max())
    assert err_point.mean() > 5 * err.mean()  # point sampling is much worse: the check can fail
    assert abs(aa.sum().item() - ref.sum()) < 0.01 * ref.sum()
    # An inner edge is never blended: a quad of two differently coloured triangles keeps its diagonal sharp.
    quad = torch.tensor([[-0.5, -0.45, 2.0], [0.52, -0.4, 2.0], [0.47, 0.5, 2.0], [-0.43, 0.55, 2.0]],
                        dtype=torch.float64)
    qfaces = torch.tensor([[0, 1, 2], [0, 2, 3]])
    frags = rasterize_mesh(quad, qfaces, viewmat, K, W, H)
    color = interpolate(torch.tensor([[[1.0, 0.0]] * 3, [[0.0, 1.0]] * 3], dtype=torch.float64), frags)
    out = antialias(color, frags, quad, viewmat, K)
    full = torch.nn.functional.max_pool2d((~frags.mask).double()[:, None], 3, 1, 1)[:, 0] == 0  # no empty neighbour
    assert full.sum() > 100
    torch.testing.assert_close(out[full], color[full], rtol=0, atol=0)
    assert (out[~full] != color[~full]).any()


def test_antialias_cube_matches_16x_supersampling():
    verts, faces = cube()
    cams = cameras_from_spherical(torch.tensor([25.0, -40.0]), torch.tensor([30.0, 200.0]), torch.tensor([2.5, 2.2]),
                                  torch.tensor([45.0, 50.0]), 32, 32)
    colors = torch.rand(12, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    _, ref, _ = render_mesh_colors(verts, faces, cams, face_colors=colors, ssaa=16)
    _, aa, _ = render_mesh_colors(verts, faces, cams, face_colors=colors, antialias=True)
    _, point, _ = render_mesh_colors(verts, faces, cams, face_colors=colors)
    err, err_point = (aa - ref).abs(), (point - ref).abs()
    assert err.mean() < 2.5e-3 and err_point.mean() > 5 * err.mean(), (err.mean(), err_point.mean())
    assert (aa.sum() - ref.sum()).abs() < 0.005 * ref.sum()


def test_antialias_silhouette_gradient_matches_finite_differences_of_analytic_coverage():
    """d/dverts of Σ w·coverage: autograd through the antialiased render vs central differences of the exact area
    coverage (an independent, smooth reference), and vs central differences of the antialiased render itself."""
    viewmat, K = pinhole()
    faces = torch.tensor([[0, 1, 2]])
    yy, xx = np.mgrid[0:H, 0:W] + 0.5
    w = 1 + 0.5 * np.sin(xx / 5.0) * np.cos(yy / 7.0) + 0.02 * xx  # smooth pixel weights

    verts = TRI.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad((aa_coverage(verts, faces, viewmat, K)[0] * torch.tensor(w)).sum(), verts)
    # Without antialiasing the coverage is a step function: no gradient at all.
    frags = rasterize_mesh(verts, faces, viewmat, K, W, H)
    assert frags.mask.to(verts.dtype).grad_fn is None

    def loss_ref(v):
        return (analytic_coverage(project_np(v, K)) * w).sum()

    def loss_aa(v):
        return (aa_coverage(torch.as_tensor(v), faces, viewmat, K)[0].numpy() * w).sum()

    fd, fd_aa = np.zeros((3, 3)), np.zeros((3, 3))
    for i in range(3):
        for j in range(3):
            dv = np.zeros((3, 3))
            dv[i, j] = 1e-4
            fd[i, j] = (loss_ref(TRI.numpy() + dv) - loss_ref(TRI.numpy() - dv)) / 2e-4
            dv[i, j] = 1e-7  # the antialiased image is piecewise linear in the vertices: tiny steps are exact
            fd_aa[i, j] = (loss_aa(TRI.numpy() + dv) - loss_aa(TRI.numpy() - dv)) / 2e-7
    g = grad.numpy()
    print("autograd\n", g, "\nFD analytic coverage\n", fd)
    np.testing.assert_allclose(g, fd_aa, rtol=1e-5, atol=1e-4)  # the backward pass is the forward's derivative
    assert np.abs(fd).max() > 50  # a strong silhouette signal
    assert np.linalg.norm(g - fd) < 0.08 * np.linalg.norm(fd)
    big = np.abs(fd) > 20
    assert (np.sign(g[big]) == np.sign(fd[big])).all()


def test_antialias_gradient_of_a_sweeping_edge_matches_analytic_coverage_change():
    """Translate the right edge of a quad (its two vertices) across the pixels: the derivative of Σ w·coverage
    through the antialiased render vs the exact change of the analytic coverage."""
    viewmat, K = pinhole()
    z = 2.0
    screen = np.array([[6.3, 5.2], [24.6, 6.1], [26.1, 26.7], [5.7, 25.4]])
    quad = torch.tensor(np.column_stack([(screen - W / 2) * z / 30.0, np.full(4, z)]))
    faces = torch.tensor([[0, 1, 2], [0, 2, 3]])
    yy, xx = np.mgrid[0:H, 0:W] + 0.5
    w = xx / W + 0.3 * np.sin(yy / 4.0)  # weights varying along the edge
    move = torch.zeros(4, 3, dtype=torch.float64)
    move[1, 0] = move[2, 0] = 1.0

    t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad((aa_coverage(quad + t * move, faces, viewmat, K)[0] * torch.tensor(w)).sum(), t)

    def loss_ref(dt):
        pts = project_np((quad + dt * move).numpy(), K)
        return ((analytic_coverage(pts[[0, 1, 2]]) + analytic_coverage(pts[[0, 2, 3]])) * w).sum()

    h = 1e-4
    fd = (loss_ref(h) - loss_ref(-h)) / (2 * h)
    print("sweeping edge: autograd", grad.item(), "FD of analytic coverage", fd)
    assert fd > 100
    assert abs(grad.item() - fd) < 0.05 * fd  # measured 2.7 % (the two corners of the moving edge)


def test_antialias_keeps_interior_gradient_matching_finite_differences():
    viewmat, K = pinhole()
    faces = torch.tensor([[0, 1, 2]])
    attr = torch.tensor([[1.0, 0.2], [-0.5, 2.0], [0.3, -1.0]], dtype=torch.float64)
    py, px = 15, 16  # an interior pixel: no silhouette nearby

    def value(verts):
        frags = rasterize_mesh(verts, faces, viewmat, K, W, H)
        img = antialias(interpolate(attr, frags), frags, verts, viewmat, K)
        return img[0, py, px] @ torch.tensor([0.7, -1.3], dtype=torch.float64)

    verts = TRI.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(value(verts), verts)
    fd = torch.zeros_like(TRI)
    for i in range(3):
        for j in range(3):
            dv = torch.zeros_like(TRI)
            dv[i, j] = 1e-6
            fd[i, j] = (value(TRI + dv) - value(TRI - dv)) / 2e-6
    assert grad.abs().max() > 1e-2
    torch.testing.assert_close(grad, fd, atol=1e-6, rtol=1e-5)


def test_mesh_topology_welds_split_vertices():
    from dreamkit.render.raster import mesh_topology

    verts, faces = cube()
    topo = mesh_topology(faces, verts)
    assert (topo.neighbor >= 0).all()  # closed: no boundary
    f, i = 5, 1
    g = topo.neighbor[f, i]
    edge = {int(faces[f, (i + 1) % 3]), int(faces[f, (i + 2) % 3])}
    assert edge <= set(faces[g].tolist()) and int(topo.apex[f, i]) in set(faces[g].tolist()) - edge
    # Split every face's corners into their own vertices (flat shading): welding recovers the same adjacency.
    split_verts = verts[faces.reshape(-1)]
    split_faces = torch.arange(36).view(12, 3)
    split = mesh_topology(split_faces, split_verts)
    assert torch.equal(split.neighbor, topo.neighbor)
    assert (mesh_topology(split_faces).neighbor == -1).all()  # without positions: all boundary


def test_backend_selection_on_cpu():
    verts, faces = cube()
    viewmat, K = pinhole()
    verts = verts + torch.tensor([0.0, 0.0, 3.0], dtype=torch.float64)
    a = rasterize_mesh(verts, faces, viewmat, K, W, H)
    b = rasterize_mesh(verts, faces, viewmat, K, W, H, backend="torch")
    assert torch.equal(a.face_id, b.face_id) and torch.equal(a.depth, b.depth)
    with pytest.raises(ValueError, match="backend must be one of"):
        rasterize_mesh(verts, faces, viewmat, K, W, H, backend="opengl")
    with pytest.raises(ValueError, match="needs CUDA tensors"):
        rasterize_mesh(verts, faces, viewmat, K, W, H, backend="cuda")
