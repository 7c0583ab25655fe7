"""Textured mesh exports (GLB, OBJ+MTL) checked by readers and a validator we did not write.

* the Khronos glTF validator (npm ``gltf-validator``, run with node) reports zero errors;
* trimesh and pygltflib read the GLB back: vertex count, textures, PBR factors, +Y up, origin option;
* a round trip of the house asset (UV bake → GLB → trimesh → our rasterizer) matches renders of the original;
* Gaussians on a sphere → density grid → marching cubes give a surface at the sphere's radius.
"""
from __future__ import annotations

import json
import math
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from dreamkit.cameras import orbit_cameras
from dreamkit.errors import ConfigError
from dreamkit.export.bake import bake_mesh, pad_texture, rasterize_uv
from dreamkit.export.extract import (GaussianField, density_grid, extract_mesh, keep_largest_components,
                                     marching_cubes)
from dreamkit.export.gltf import export_mesh_files, glb_bytes, write_glb
from dreamkit.export.mesh import Mesh, load_mesh_file, render_mesh
from dreamkit.export.obj import write_obj
from dreamkit.render.raster import render_mesh_colors
from dreamkit.world.meshes import load_colored_mesh

REPO = Path(__file__).resolve().parents[1]
VALIDATOR_JS = REPO / "tests" / "helpers" / "gltf_validate.js"


# ------------------------------------------------------------------------------------------------------------------
# fixtures


@pytest.fixture(scope="module")
def house():
    """The house asset with one vertex per face corner, so vertex colours reproduce its flat face colours."""
    verts, faces, face_colors = load_colored_mesh("meshes/house.ply")
    corner_verts = verts[faces].reshape(-1, 3).numpy()
    mesh = Mesh(corner_verts, np.arange(len(corner_verts)).reshape(-1, 3),
                vertex_colors=np.repeat(face_colors.numpy(), 3, axis=0))
    return SimpleNamespace(verts=verts, faces=faces, face_colors=face_colors, mesh=mesh)


@pytest.fixture(scope="module")
def baked_house(house):
    return bake_mesh(house.mesh, texture_size=256, padding=4, roughness=0.7, metallic=0.1)


def validate_glb(path: Path) -> dict:
    """The Khronos glTF validator's report for ``path``; skips when node or the npm package is missing."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed: the Khronos glTF validator runs on node (apt install nodejs)")
    if not (REPO / "node_modules" / "gltf-validator").is_dir():
        pytest.skip("npm package gltf-validator is missing: run `npm ci` (or `npm install gltf-validator`) in the "
                    "repository root")
    out = subprocess.run([node, str(VALIDATOR_JS), str(path)], cwd=REPO, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(-10 * torch.log10(((a - b) ** 2).mean().clamp_min(1e-12)))


# ------------------------------------------------------------------------------------------------------------------
# extraction


def test_marching_cubes_sphere_radius_and_outward_winding():
    r = 0.5
    grid = density_grid(lambda p: r - p.norm(dim=-1), 48, 0.8)  # positive inside
    verts, faces = marching_cubes(grid, 0.0, 0.8)
    radius = np.linalg.norm(verts, axis=1)
    assert np.abs(radius - r).max() < 0.02
    tri = verts[faces].astype(np.float64)
    signed_volume = np.einsum("ij,ij->i", tri[:, 0], np.cross(tri[:, 1], tri[:, 2])).sum() / 6
    assert signed_volume == pytest.approx(4 / 3 * np.pi * r**3, rel=0.05)  # > 0: normals point outwards


def test_gaussian_field_matches_dense_formula():
    g = torch.Generator().manual_seed(0)
    n = 300
    means = torch.rand(n, 3, generator=g) - 0.5
    scales = 0.02 + 0.05 * torch.rand(n, 3, generator=g)
    quats = torch.randn(n, 4, generator=g)
    opac = torch.rand(n, generator=g)
    colors = torch.rand(n, 3, generator=g)
    field = GaussianField(means, scales, quats, opac, colors, cutoff_sigma=3.0, max_pairs=40000)  # several chunks
    points = torch.rand(3000, 3, generator=g) * 1.2 - 0.6
    density, color_sum = field.query(points)
    # Dense reference: every point against every Gaussian, covariance built independently of the field.
    w, x, y, z = torch.nn.functional.normalize(quats, dim=-1).unbind(-1)
    R = torch.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
                     2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
                     2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1).view(n, 3, 3)
    cov = R @ torch.diag_embed(scales**2) @ R.transpose(1, 2)
    d = points[:, None] - means[None]
    m = torch.einsum("pni,nij,pnj->pn", d, torch.linalg.inv(cov), d)
    weight = opac * torch.exp(-0.5 * m) * (m < 9)
    torch.testing.assert_close(density, weight.sum(1), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(color_sum, weight @ colors, atol=1e-4, rtol=1e-4)
    # The splatting grid path agrees with the generic chunked grid evaluation (up to samples at the cutoff).
    fast = field.density_grid(24, 0.6)
    generic = density_grid(field.query_density, 24, 0.6, chunk=8000)
    assert np.abs(fast - generic).max() < 0.02


def test_keep_largest_components():
    import trimesh

    big = trimesh.creation.icosphere(2)
    small = trimesh.creation.icosphere(0)
    verts = np.concatenate([big.vertices, small.vertices + 3])
    faces = np.concatenate([big.faces, small.faces + len(big.vertices)])
    v, f = keep_largest_components(verts, faces, keep=1)
    assert len(f) == len(big.faces) and len(v) == len(big.vertices)
    v, f = keep_largest_components(verts, faces, keep=0)
    assert len(f) == len(faces)
    # relative to the largest: a part of a third of its size stays (a snowman's head), a speck goes
    mid = trimesh.creation.icosphere(1)
    verts3 = np.concatenate([verts, mid.vertices - 3])
    faces3 = np.concatenate([faces, mid.faces + len(verts)])
    assert len(big.faces) / len(mid.faces) == 4 and len(big.faces) / len(small.faces) == 16
    v, f = keep_largest_components(verts3, faces3, keep=0, min_of_largest=0.1)
    assert len(f) == len(big.faces) + len(mid.faces)
    v, f = keep_largest_components(verts3, faces3, keep=0, min_of_largest=0.3)
    assert len(f) == len(big.faces)


def sphere_gaussians(n=1500, radius=0.5):
    """A GaussianModel whose Gaussians lie on a sphere: red on the upper half (+Y), blue on the lower half."""
    from omegaconf import OmegaConf

    from dreamkit.render.sh import rgb_to_sh0
    from dreamkit.representations.gaussians import GaussianConfig, GaussianModel

    model = GaussianModel(OmegaConf.structured(GaussianConfig(num_points=n, init_scale=0.01)),
                          torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(1)
    direction = torch.nn.functional.normalize(torch.randn(n, 3, generator=g), dim=-1)
    colors = torch.where(direction[:, 1:2] > 0, torch.tensor([0.9, 0.1, 0.1]), torch.tensor([0.1, 0.1, 0.9]))
    with torch.no_grad():
        model.params["means"].copy_(direction * radius)
        model.params["log_scales"].fill_(float(np.log(0.035)))
        model.params["opacity_logits"].fill_(float(torch.logit(torch.tensor(0.8))))
        model.params["sh0"].copy_(rgb_to_sh0(colors)[:, None, :])
    return model


def test_visual_hull_of_a_gaussian_shell_is_one_solid_surface():
    """A shell of Gaussians renders as an opaque ball. Its density iso-surface is two nested spheres (the shell's
    outside and inside); the visual hull (export.mesh_method=hull) is one closed sphere just outside the shell,
    with the colours of the Gaussians under it."""
    import trimesh

    from dreamkit.export.extract import fibonacci_view_directions, mesh_from_representation

    el, az = fibonacci_view_directions(24)
    assert el.min() >= -75 and el.max() <= 75 and len(az.unique()) == 24
    model = sphere_gaussians()
    common = dict(mesh_resolution=64, mesh_bound=0.0, mesh_components=0, mesh_faces=0, mesh_views=24)
    dense, _ = mesh_from_representation(model, SimpleNamespace(mesh_method="density", mesh_threshold=0.3, **common))
    hull, _ = mesh_from_representation(model, SimpleNamespace(mesh_method="hull", mesh_threshold=123.0, **common))
    r_dense = np.linalg.norm(dense.verts, axis=1)
    r_hull = np.linalg.norm(hull.verts, axis=1)
    assert r_dense.min() < 0.47 and r_dense.max() > 0.52  # the inner and the outer wall of the shell
    assert r_hull.min() > 0.48 and r_hull.max() < 0.62  # only the outside
    mesh = trimesh.Trimesh(hull.verts, hull.faces, process=True)
    assert len(mesh.split(only_watertight=False)) == 1 and mesh.euler_number == 2  # one sphere-like surface
    r = float(np.median(r_hull))
    assert abs(mesh.area / (4 * np.pi * r * r) - 1) < 0.1
    up = hull.verts[:, 1] > 0.2
    assert (hull.vertex_colors[up, 0] > hull.vertex_colors[up, 2]).all()  # red on top, from the Gaussians
    with pytest.raises(ConfigError, match="mesh_method='voxels'"):
        mesh_from_representation(model, SimpleNamespace(mesh_method="voxels", **common))


def test_hull_alpha_keeps_a_half_opaque_thin_part():
    """export.mesh_hull_alpha: a thin part that renders half opaque (a snowman's carrot as SDS leaves it: a line of
    Gaussians at opacity 0.3, alpha ≈ 0.4 side on, sticking out of a ball along +Z to z = 0.8) is outside the
    silhouettes at the default alpha 0.5 (but for its root in the ball's fringe) and inside them at 0.3, while the
    ball keeps its size."""
    from omegaconf import OmegaConf

    from dreamkit.export.extract import mesh_from_representation
    from dreamkit.representations.gaussians import GaussianConfig, GaussianModel

    shell, k = sphere_gaussians(), 12
    model = GaussianModel(OmegaConf.structured(GaussianConfig(num_points=len(shell.means) + k, init_scale=0.01)),
                          torch.Generator().manual_seed(0))
    with torch.no_grad():
        for name in ("means", "log_scales", "opacity_logits", "sh0", "quats"):
            if name in model.params:
                model.params[name][:len(shell.means)] = shell.params[name]
        model.params["means"][-k:] = torch.stack([torch.zeros(k), torch.zeros(k), torch.linspace(0.5, 0.8, k)], -1)
        model.params["log_scales"][-k:] = float(np.log(0.015))
        model.params["opacity_logits"][-k:] = float(torch.logit(torch.tensor(0.3)))
    common = dict(mesh_method="hull", mesh_resolution=64, mesh_bound=0.9, mesh_components=1, mesh_faces=0,
                  mesh_views=24, mesh_threshold=0.0, mesh_color="field")
    default, _ = mesh_from_representation(model, SimpleNamespace(**common))
    low, _ = mesh_from_representation(model, SimpleNamespace(mesh_hull_alpha=0.3, **common))
    assert default.verts[:, 2].max() < 0.7 and low.verts[:, 2].max() > 0.77  # the tip: z = 0.8 + a Gaussian
    for hull in (default, low):
        assert 0.52 < hull.verts[:, 0].max() < 0.62  # the ball across (radius 0.5 + its Gaussians)
    with pytest.raises(ConfigError, match="mesh_hull_alpha=1.5"):
        mesh_from_representation(model, SimpleNamespace(mesh_hull_alpha=1.5, **common))


def test_hull_resolution_sets_the_silhouettes_size_not_the_grid():
    """export.mesh_hull_resolution: the hull's silhouettes are rendered at that size while marching cubes keeps
    mesh_resolution's grid (0 = the grid's size, as before); the ball's size agrees within one coarse silhouette
    pixel, and a size that cannot be a render is a ConfigError naming the key."""
    from dreamkit.export.extract import mesh_from_representation

    model = sphere_gaussians()
    sizes = []
    render = model.render

    def spy(cameras, *args, **kw):
        sizes.append((int(cameras.width), int(cameras.height)))
        return render(cameras, *args, **kw)

    model.render = spy
    common = dict(mesh_method="hull", mesh_resolution=48, mesh_bound=0.9, mesh_components=1, mesh_faces=0,
                  mesh_views=12, mesh_threshold=0.0, mesh_color="field")
    fine, _ = mesh_from_representation(model, SimpleNamespace(**common))
    assert set(sizes) == {(48, 48)} and len(sizes) == 12
    sizes.clear()
    coarse, _ = mesh_from_representation(model, SimpleNamespace(mesh_hull_resolution=24, **common))
    assert set(sizes) == {(24, 24)} and len(sizes) == 12
    # the ball (radius 0.5 + its Gaussians) agrees within one of the coarse silhouettes' pixels (they see the
    # 0.9-box's circumscribed ball, with a 5% margin, at fovy 40°: 1.05·0.9·√3 / sin 20° away)
    pixel = 2 * 1.05 * 0.9 * 3 ** 0.5 / math.sin(math.radians(20)) * math.tan(math.radians(20)) / 24
    assert 0.52 < fine.verts[:, 0].max() < 0.66
    assert abs(coarse.verts[:, 0].max() - fine.verts[:, 0].max()) < pixel
    with pytest.raises(ConfigError, match="mesh_hull_resolution=4"):
        mesh_from_representation(model, SimpleNamespace(mesh_hull_resolution=4, **common))


def test_textured_mesh_cache_follows_every_mesh_setting():
    """textured_mesh extracts and bakes once for `glb` then `obj` of one model, and again when any export.mesh_* or
    texture_* setting changes — e.g. mesh_hull_alpha, which the cache key's former hand-written list missed."""
    from dreamkit.export.bake import textured_mesh

    model = sphere_gaussians()
    common = dict(mesh_method="hull", mesh_resolution=24, mesh_bound=0.0, mesh_components=1, mesh_faces=0,
                  mesh_views=8, mesh_threshold=0.0, mesh_color="field", texture_size=32, texture_padding=2)
    first = textured_mesh(model, SimpleNamespace(mesh_hull_alpha=0.5, **common))
    assert textured_mesh(model, SimpleNamespace(mesh_hull_alpha=0.5, **common)) is first
    other = textured_mesh(model, SimpleNamespace(mesh_hull_alpha=0.95, **common))
    assert other is not first


def test_rendered_colors_show_what_the_renders_show():
    """export.mesh_color=renders: each surface point takes the colour of the renders that see it (depth-tested
    against the mesh). The reference is a direct render: a red-top / blue-bottom shell with a small patch of opaque
    yellow Gaussians just outside the red, 30° up from +Z. A direct render looking at the patch shows yellow, and so
    do the projected colours there; the field colour (density-weighted over every Gaussian near the point) shows the
    red under it. The bottom takes nothing from the top (the depth test), and matches a direct render's pixel."""
    from omegaconf import OmegaConf

    from dreamkit.export.extract import RenderedColors, mesh_from_representation
    from dreamkit.render.sh import rgb_to_sh0
    from dreamkit.representations.gaussians import GaussianConfig, GaussianModel

    shell, k = sphere_gaussians(), 150
    model = GaussianModel(OmegaConf.structured(GaussianConfig(num_points=len(shell.means) + k, init_scale=0.01)),
                          torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(2)
    # the patch: k small opaque yellow Gaussians in a cap of ~14°, just outside the red shell, which stays
    centre = torch.nn.functional.normalize(torch.tensor([0.0, 0.5, 0.866]), dim=0)  # 30° up, on the red half
    d = torch.nn.functional.normalize(torch.randn(k, 3, generator=g) * 0.12 + centre, dim=-1)
    with torch.no_grad():
        for name in ("means", "log_scales", "opacity_logits", "sh0", "quats"):
            if name in model.params:
                model.params[name][:len(shell.means)] = shell.params[name]
        model.params["means"][-k:] = d * 0.51
        model.params["log_scales"][-k:] = float(np.log(0.02))
        model.params["opacity_logits"][-k:] = float(torch.logit(torch.tensor(0.99)))
        model.params["sh0"][-k:] = rgb_to_sh0(torch.tensor([[0.95, 0.9, 0.1]]))[:, None, :]
    common = dict(mesh_method="hull", mesh_resolution=64, mesh_bound=0.0, mesh_components=1, mesh_faces=0,
                  mesh_views=24, mesh_threshold=0.0)
    mesh, colors = mesh_from_representation(model, SimpleNamespace(mesh_color="renders", **common))
    field_mesh, field_colors = mesh_from_representation(model, SimpleNamespace(mesh_color="field", **common))
    assert isinstance(colors, RenderedColors) and not isinstance(field_colors, RenderedColors)
    np.testing.assert_array_equal(mesh.verts, field_mesh.verts)  # same geometry, only the colours differ
    near = mesh.verts @ centre.numpy() / np.linalg.norm(mesh.verts, axis=1) > np.cos(np.deg2rad(3.5))
    assert near.sum() >= 3
    # the reference: a direct render looking at the patch's centre (un-premultiplied pixels at the image centre)
    from dreamkit.cameras import cameras_from_spherical
    cam = cameras_from_spherical(torch.tensor([30.0]), torch.tensor([0.0]), torch.tensor([3.0]), torch.tensor([30.0]),
                                 64, 64)
    out = model.render(cam, background=torch.zeros(1, 3))
    seen = (out.rgb[0, 30:34, 30:34] / out.alpha[0, 30:34, 30:34]).reshape(-1, 3).median(0).values.detach().numpy()
    assert np.abs(seen - [0.95, 0.9, 0.1]).max() < 0.1  # the render shows the yellow patch
    err_renders = np.abs(np.median(mesh.vertex_colors[near], 0) - seen).max()
    err_field = np.abs(np.median(field_mesh.vertex_colors[near], 0) - seen).max()
    assert err_renders < 0.1 and err_field > 0.5  # the field shows the red under the patch
    top = (mesh.verts[:, 1] > 0.3)
    bottom = (mesh.verts[:, 1] < -0.3)
    np.testing.assert_allclose(np.median(mesh.vertex_colors[top], 0), [0.9, 0.1, 0.1], atol=0.12)
    np.testing.assert_allclose(np.median(mesh.vertex_colors[bottom], 0), [0.1, 0.1, 0.9], atol=0.12)
    # the point straight below the centre against a direct render looking up at it
    cam = cameras_from_spherical(torch.tensor([-75.0]), torch.tensor([0.0]), torch.tensor([3.0]),
                                 torch.tensor([30.0]), 64, 64)
    out = model.render(cam, background=torch.zeros(1, 3))
    pixel = (out.rgb[0, 32, 32] / out.alpha[0, 32, 32]).detach().numpy()
    below = colors(torch.tensor([[0.0, -0.53, 0.0]])).numpy()[0]
    np.testing.assert_allclose(below, pixel, atol=0.08)
    with pytest.raises(ConfigError, match="mesh_color='paint'"):
        mesh_from_representation(model, SimpleNamespace(mesh_color="paint", **common))


def test_gaussians_to_textured_glb_and_obj(tmp_path):
    radius = 0.5
    model = sphere_gaussians(radius=radius)
    cfg = SimpleNamespace(mesh_resolution=48, mesh_threshold=1.0, mesh_bound=0.0, mesh_components=1,
                          mesh_faces=2000, texture_size=128, texture_padding=4, mesh_roughness=0.8,
                          mesh_metallic=0.0, mesh_origin="keep", mesh_preview=True, turntable_frames=4,
                          turntable_fps=4, turntable_resolution=48, turntable_elevation=15.0,
                          turntable_distance=2.5, turntable_fovy=40.0)
    glb = export_mesh_files(model, tmp_path / "mesh.glb", export_cfg=cfg)
    assert glb.exists() and glb.with_suffix(".obj").exists()
    assert (tmp_path / "mesh_glb_preview.png").exists() and (tmp_path / "mesh_glb_turntable.mp4").exists()

    if shutil.which("node") and (REPO / "node_modules" / "gltf-validator").is_dir():
        assert validate_glb(glb)["issues"]["numErrors"] == 0
    mesh = load_mesh_file(glb)
    assert mesh.num_faces <= 2000 * 1.05
    # One closed outer surface at about the sphere's radius (the Gaussians' shell thickens it by ~ their size).
    rho = np.linalg.norm(mesh.verts, axis=1)
    assert np.abs(rho - radius).max() < 0.1 and np.abs(np.median(rho) - radius) < 0.06
    # The texture keeps the colours where they were: red above, blue below.
    from dreamkit.export.mesh import sample_texture

    colors = sample_texture(torch.as_tensor(mesh.base_color), torch.as_tensor(mesh.uvs)).numpy()
    top, bottom = mesh.verts[:, 1] > 0.2, mesh.verts[:, 1] < -0.2
    assert (colors[top, 0] > 0.6).mean() > 0.95 and (colors[bottom, 2] > 0.6).mean() > 0.95

    import trimesh

    obj = trimesh.load(str(glb.with_suffix(".obj")), process=False)
    assert obj.visual.kind == "texture" and obj.visual.material.image is not None
    assert obj.visual.uv.shape == (len(obj.vertices), 2)
    assert np.abs(np.linalg.norm(obj.vertices, axis=1) - radius).max() < 0.1


def test_marching_cubes_closes_a_solid_that_the_box_cuts():
    """A sphere of radius 0.5 in a box of half-size 0.4: the mesh is closed by flat caps on the box's faces (trimesh
    calls it watertight) and its volume is the sphere's part inside the cube, worked by Monte Carlo."""
    import trimesh

    grid = density_grid(lambda p: 0.5 - p.norm(dim=-1), 48, 0.4)
    verts, faces = marching_cubes(grid, 0.0, 0.4)
    mesh = trimesh.Trimesh(verts.astype(np.float64), faces, process=True)
    assert mesh.is_watertight
    half_cell = 0.8 / 47 / 2
    assert np.all(mesh.bounds[1] > 0.4) and np.all(mesh.bounds[1] <= 0.4 + half_cell)  # caps within half a cell
    assert np.all(mesh.bounds[0] < -0.4) and np.all(mesh.bounds[0] >= -0.4 - half_cell)
    points = np.random.default_rng(0).uniform(-0.4, 0.4, (400_000, 3))
    inside = (np.linalg.norm(points, axis=1) < 0.5).mean() * 0.8**3
    assert mesh.volume == pytest.approx(inside, rel=0.02)  # (+ the caps lie within half a cell outside the box)


class _TightBox:
    """A sphere of radius 0.5 whose own ``mesh_bound`` (half-size 0.3, an estimate: ``mesh_bound_grows``) cuts it."""

    mesh_bound_grows = True

    def query_density(self, points):
        return 0.5 - points.norm(dim=-1)

    def query_color(self, points):
        return torch.ones(len(points), 3)

    def mesh_bound(self):
        return np.array([[-0.3] * 3, [0.3] * 3])


def test_extract_mesh_grows_a_field_own_box_that_cuts_the_solid_but_not_a_given_one():
    import trimesh

    grown = extract_mesh(_TightBox(), resolution=48, threshold=0.0, max_faces=0)
    mesh = trimesh.Trimesh(grown.verts.astype(np.float64), grown.faces, process=True)
    assert mesh.is_watertight
    assert np.allclose(mesh.extents, 1.0, atol=0.02)  # 0.3 → 0.375 → 0.469 cuts; 0.586 holds the sphere whole
    domain = _TightBox()
    domain.mesh_bound_grows = False  # a box that is the field's domain (a NeRF's AABB) is kept as well
    assert np.all(extract_mesh(domain, resolution=48, threshold=0.0, max_faces=0).verts.max(0) <= 0.3 + 0.6 / 47 / 2)
    given = extract_mesh(_TightBox(), resolution=48, threshold=0.0, max_faces=0, bound=0.3)
    assert np.all(given.verts.max(0) <= 0.3 + 0.6 / 47 / 2)  # a box the caller chose is kept (and the cut capped)
    assert trimesh.Trimesh(given.verts.astype(np.float64), given.faces, process=True).is_watertight


def test_extract_mesh_fails_clearly_when_empty():
    field = GaussianField(torch.zeros(1, 3), torch.full((1, 3), 0.1), torch.tensor([[1.0, 0, 0, 0]]),
                          torch.tensor([0.1]), torch.ones(1, 3))
    with pytest.raises(ValueError, match="mesh_threshold"):
        extract_mesh(field, resolution=16, threshold=1.0)


# ------------------------------------------------------------------------------------------------------------------
# baking


def test_uv_rasterizer_covers_charts_and_padding_fills_seams():
    # One triangle covering the lower-left half of UV space (OpenGL v up → the image's lower-left half).
    face_id, bary = rasterize_uv(np.array([[0, 0], [1, 0], [0, 1]], np.float32), np.array([[0, 1, 2]]), 16)
    covered = (face_id >= 0).numpy()
    assert covered[15, 0] and not covered[0, 15] and covered.sum() in range(100, 140)
    torch.testing.assert_close(bary[face_id >= 0].sum(-1), torch.ones(int(covered.sum())))
    tex = torch.zeros(16, 16, 3)
    tex[torch.as_tensor(covered)] = torch.tensor([1.0, 0.5, 0.0])
    padded = pad_texture(tex, torch.as_tensor(covered), pixels=2)
    assert torch.allclose(padded, torch.tensor([1.0, 0.5, 0.0]).expand(16, 16, 3))  # no background bleeds in


# ------------------------------------------------------------------------------------------------------------------
# GLB: validator, readers, round trip


def test_glb_passes_khronos_validator(tmp_path, baked_house):
    path = write_glb(baked_house, tmp_path / "house.glb", origin="base")
    report = validate_glb(path)
    assert report["issues"]["numErrors"] == 0, report["issues"]["messages"]
    assert report["issues"]["numWarnings"] == 0, report["issues"]["messages"]
    # With a normal map the only remark allowed is that tangents are generated by the viewer.
    with_normals = baked_house.copy(normal_map=np.tile(np.float32([0.5, 0.5, 1.0]), (8, 8, 1)))
    report = validate_glb(write_glb(with_normals, tmp_path / "house_nm.glb"))
    assert report["issues"]["numErrors"] == 0, report["issues"]["messages"]
    # Untextured meshes (vertex colours as COLOR_0) are valid too.
    report = validate_glb(write_glb(baked_house.copy(uvs=None, base_color=None, orm=None), tmp_path / "vc.glb"))
    assert report["issues"]["numErrors"] == 0, report["issues"]["messages"]


def test_glb_read_back_by_trimesh_and_pygltflib(tmp_path, house, baked_house):
    import pygltflib
    import trimesh

    for origin in ("centre", "base"):
        path = write_glb(baked_house, tmp_path / f"house_{origin}.glb", origin=origin)
        scene = trimesh.load(str(path), process=False)
        (loaded,) = scene.dump()
        assert len(loaded.vertices) == baked_house.num_verts
        assert loaded.visual.material.baseColorTexture is not None
        lo, hi = loaded.bounds
        if origin == "centre":
            np.testing.assert_allclose((lo + hi) / 2, 0, atol=1e-5)
        else:
            assert lo[1] == pytest.approx(0, abs=1e-6)
            np.testing.assert_allclose(((lo + hi) / 2)[[0, 2]], 0, atol=1e-5)
        # Only a translation: the roof stays at +Y, the door at +Z, the side window at +X (no axis swap or flip).
        shift = np.asarray(loaded.vertices[0]) - baked_house.verts[0]
        np.testing.assert_allclose(np.asarray(loaded.vertices), baked_house.verts + shift, atol=1e-5)
        # Read through trimesh's texture lookup: the highest vertices are roof red or chimney slate, never wall.
        top = np.asarray(loaded.vertices)[:, 1] > hi[1] - 0.05
        top_colors = loaded.visual.to_color().vertex_colors[top, :3].astype(int)
        assert top.any() and all(tuple(c) in {(196, 40, 32), (100, 105, 130)} or abs(c - [196, 40, 32]).max() < 4
                                 or abs(c - [100, 105, 130]).max() < 4 for c in top_colors)

        gltf = pygltflib.GLTF2().load(str(path))
        assert gltf.asset.version == "2.0"
        prim = gltf.meshes[0].primitives[0]
        pos = gltf.accessors[prim.attributes.POSITION]
        assert pos.count == baked_house.num_verts
        np.testing.assert_allclose(pos.min, loaded.bounds[0], atol=1e-6)
        np.testing.assert_allclose(pos.max, loaded.bounds[1], atol=1e-6)
        assert prim.attributes.TEXCOORD_0 is not None and prim.attributes.NORMAL is not None
        material = gltf.materials[prim.material]
        pbr = material.pbrMetallicRoughness
        assert pbr.baseColorTexture is not None and pbr.metallicRoughnessTexture is not None
        assert material.occlusionTexture is not None
        assert pbr.metallicFactor == 1.0 and pbr.roughnessFactor == 1.0 and pbr.baseColorFactor == [1, 1, 1, 1]
        assert len(gltf.images) == 2 and all(img.mimeType == "image/png" for img in gltf.images)
        assert all(view.byteOffset % 4 == 0 for view in gltf.bufferViews)

    # The ORM texture carries the constants: G = roughness, B = metallic, R = occlusion.
    mesh = load_mesh_file(tmp_path / "house_base.glb")
    np.testing.assert_allclose(mesh.orm.reshape(-1, 3).mean(0), [1.0, 0.7, 0.1], atol=2 / 255)


def test_round_trip_house_glb_renders_like_the_original(tmp_path, house, baked_house):
    path = write_glb(baked_house, tmp_path / "house.glb", origin="keep")
    reloaded = load_mesh_file(path)  # through trimesh, texture and UVs from the file
    assert reloaded.base_color is not None and reloaded.uvs is not None
    cams = orbit_cameras(4, 96, 96, elevation=20.0, distance=2.5, start_azimuth=30.0)
    target, _, _ = render_mesh_colors(house.verts, house.faces, cams, face_colors=house.face_colors)
    rendered, _ = render_mesh(reloaded, cams)
    assert psnr(rendered, target) >= 24.0


def test_obj_mtl_read_back_by_trimesh(tmp_path, baked_house):
    import trimesh

    path = write_obj(baked_house, tmp_path / "house.obj", origin="keep")
    mtl = (tmp_path / "house.mtl").read_text()
    assert "map_Kd house_basecolor.png" in mtl and "map_Pr house_roughness.png" in mtl
    loaded = trimesh.load(str(path), process=False)
    assert loaded.visual.kind == "texture"
    image = np.asarray(loaded.visual.material.image.convert("RGB"))
    assert image.shape == (256, 256, 3)
    assert len(loaded.faces) == baked_house.num_faces
    np.testing.assert_allclose(loaded.bounds, np.stack([baked_house.verts.min(0), baked_house.verts.max(0)]),
                               atol=1e-5)
    # Re-rendered through the OBJ reader it still looks like the house.
    cams = orbit_cameras(2, 64, 64, elevation=20.0, distance=2.5)
    a, _ = render_mesh(load_mesh_file(path), cams)
    b, _ = render_mesh(baked_house, cams)
    assert psnr(a, b) >= 30.0


def test_exporters_registered_and_origin_checked(tmp_path, baked_house):
    from dreamkit.errors import ConfigError
    from dreamkit.export.gltf import export_glb
    from dreamkit.registry import exporter

    from dreamkit.export.obj import export_obj

    assert exporter("glb") is export_glb and exporter("obj") is export_obj
    with pytest.raises(ConfigError, match="mesh_origin"):
        export_glb(object(), tmp_path / "x.glb", export_cfg=SimpleNamespace(mesh_origin="top"))
    with pytest.raises(ValueError, match="empty"):
        glb_bytes(Mesh(np.zeros((0, 3)), np.zeros((0, 3))))


# ------------------------------------------------------------------------------------------------------------------
# unlit materials: colours that already hold the lighting


def test_unlit_glb_is_valid_and_viewers_show_the_colours_unshaded(tmp_path, house, baked_house):
    """``Mesh.unlit`` writes the ratified KHR_materials_unlit extension (used, not required, over the same
    metallic-roughness fallback); the validator accepts it, pygltflib and our loader read it back, and the file
    re-rendered as such a viewer shows it matches the truth rendered without shading (an independent renderer)."""
    import pygltflib

    path = write_glb(baked_house.copy(unlit=True), tmp_path / "house_unlit.glb", origin="keep")
    report = validate_glb(path)
    assert report["issues"]["numErrors"] == 0 and report["issues"]["numWarnings"] == 0, report["issues"]["messages"]
    gltf = pygltflib.GLTF2().load(str(path))
    assert gltf.extensionsUsed == ["KHR_materials_unlit"] and not gltf.extensionsRequired
    material = gltf.materials[0]
    assert material.extensions == {"KHR_materials_unlit": {}}
    assert material.pbrMetallicRoughness.baseColorTexture is not None  # the fallback and the unlit colour source
    # The lit file has no extension, and the loader tells them apart.
    lit = write_glb(baked_house, tmp_path / "house_lit.glb", origin="keep")
    assert not pygltflib.GLTF2().load(str(lit)).extensionsUsed
    reloaded, reloaded_lit = load_mesh_file(path), load_mesh_file(lit)
    assert reloaded.unlit and not reloaded_lit.unlit

    cams = orbit_cameras(4, 96, 96, elevation=20.0, distance=2.5, start_azimuth=30.0)
    flat, _, _ = render_mesh_colors(house.verts, house.faces, cams, face_colors=house.face_colors, ambient=1.0,
                                    diffuse=0.0)
    shaded, _, _ = render_mesh_colors(house.verts, house.faces, cams, face_colors=house.face_colors)
    unlit_rgb, _ = render_mesh(reloaded, cams)
    lit_rgb, _ = render_mesh(reloaded_lit, cams)
    assert psnr(unlit_rgb, flat) >= 24.0 and psnr(lit_rgb, shaded) >= 24.0
    assert psnr(unlit_rgb, shaded) < 21.0  # the two really differ: a shaded preview of an unlit file would fail


def test_unlit_obj_writes_illum_0_and_reads_back(tmp_path, baked_house):
    path = write_obj(baked_house.copy(unlit=True), tmp_path / "house.obj", origin="keep")
    assert "illum 0" in (tmp_path / "house.mtl").read_text().splitlines()
    assert load_mesh_file(path).unlit
    lit = write_obj(baked_house, tmp_path / "lit" / "house.obj", origin="keep")
    assert "illum 2" in (tmp_path / "lit" / "house.mtl").read_text().splitlines()
    assert not load_mesh_file(lit).unlit


def test_mesh_material_auto_follows_where_the_colours_come_from():
    """auto: unlit for colours that hold the lighting (Gaussians; NeRF with shading=albedo; a mesh whose training
    renders are never shaded; anything projected from renders), pbr for an albedo learned under lights."""
    from omegaconf import OmegaConf

    from dreamkit.errors import ConfigError
    from dreamkit.export.bake import check_material, material_is_unlit
    from dreamkit.export.extract import RenderedColors
    from dreamkit.representations.mesh import MeshConfig, MeshModel
    from dreamkit.representations.nerf import NeRFConfig, NeRFModel

    gaussians = sphere_gaussians(n=50)
    nerf_kw = dict(n_levels=2, base_resolution=4, per_level_scale=1.5, hidden_dim=8, num_samples=8,
                   occ_resolution=8, normals="analytic")
    nerf_albedo = NeRFModel(NeRFConfig(**nerf_kw), torch.Generator().manual_seed(0))
    nerf_diffuse = NeRFModel(NeRFConfig(shading="diffuse", **nerf_kw), torch.Generator().manual_seed(0))
    mesh_cfg = OmegaConf.structured(MeshConfig(init_subdivisions=1))
    mesh_albedo_only = MeshModel(mesh_cfg)
    mesh_cfg_shaded = OmegaConf.structured(MeshConfig(init_subdivisions=1))
    mesh_cfg_shaded.material.mode_probs = [0.2, 0.3, 0.5]  # DreamFusion-style random shading
    mesh_shaded = MeshModel(mesh_cfg_shaded)

    assert material_is_unlit(gaussians, None)
    assert material_is_unlit(nerf_albedo, nerf_albedo.query_color)
    assert not material_is_unlit(nerf_diffuse, nerf_diffuse.query_color)
    assert material_is_unlit(mesh_albedo_only, mesh_albedo_only.query_color)
    assert not material_is_unlit(mesh_shaded, mesh_shaded.query_color)
    projected = RenderedColors.__new__(RenderedColors)  # only its type matters here
    assert material_is_unlit(nerf_diffuse, projected)  # renders show the lighting, whatever the field learned
    # explicit choices win
    assert not material_is_unlit(gaussians, None, "pbr") and material_is_unlit(mesh_shaded, None, "unlit")
    with pytest.raises(ConfigError, match="mesh_material='lit'.*auto.*pbr.*unlit"):
        check_material(SimpleNamespace(mesh_material="lit"))


def test_write_video_without_imageio_ffmpeg_says_what_to_install(tmp_path, monkeypatch):
    """imageio alone would hand an .mp4 to its tifffile plugin (TypeError: unexpected keyword 'fps'); we name the fix."""
    import sys

    from dreamkit.errors import DreamkitError
    from dreamkit.imageio_utils import write_video

    monkeypatch.setitem(sys.modules, "imageio_ffmpeg", None)  # import raises ImportError
    with pytest.raises(DreamkitError, match="pip install imageio-ffmpeg"):
        write_video(torch.rand(2, 16, 16, 3), tmp_path / "t.mp4")
    assert not (tmp_path / "t.mp4").exists()
