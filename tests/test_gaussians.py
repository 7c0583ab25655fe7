"""3D Gaussians: initialisation, SH degrees, and the densification strategy's edits of parameters and Adam state."""
import math

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from dreamkit.cameras import orbit_cameras
from dreamkit.errors import ConfigError
from dreamkit.representations.gaussian_strategy import quat_to_rotmat
from dreamkit.representations.gaussians import GaussianConfig, GaussianModel, knn_mean_distance


def knn_reference(points):
    """Mean distance to the 3 nearest other points in float64, from differences (an independent reference)."""
    d = torch.cdist(points.double(), points.double(), compute_mode="donot_use_mm_for_euclid_dist")
    d.fill_diagonal_(math.inf)
    return d.topk(3, largest=False).values.mean(1)


def make(**kw):
    densify = kw.pop("densify", {})
    cfg = OmegaConf.structured(GaussianConfig(**kw))
    for k, v in densify.items():
        cfg.densify[k] = v
    return GaussianModel(cfg, torch.Generator().manual_seed(0))


def adam_for(model):
    groups = [{k: v for k, v in g.items() if k not in ("lr_schedule", "lr_key")} | {"lr": 1e-3}
              for g in model.parameter_groups()]
    return torch.optim.Adam(groups)


def test_sphere_init_and_knn_scale():
    m = make(num_points=500, init_radius=0.5)
    assert m.num_gaussians == 500
    assert m.means.norm(dim=-1).max() <= 0.5 + 1e-6
    pts = m.means.detach()
    assert torch.allclose(m.scales[:, 0].double(), knn_reference(pts), rtol=2e-6)
    assert torch.allclose(m.opacities, torch.full((500,), 0.1))
    # colour round trip through SH degree 0
    rgb = m.params["sh0"][:, 0] * 0.28209479177387814 + 0.5
    assert torch.allclose(rgb, torch.full_like(rgb, 0.5), atol=1e-6)


def test_mesh_init_points_on_surface_with_face_colours():
    import trimesh

    from dreamkit.assets import asset_path

    m = make(init="mesh", init_path="meshes/house.ply", num_points=400)
    mesh = trimesh.load(str(asset_path("meshes/house.ply")), process=False)
    # every point lies inside one of the faces: plane distance ~0 with barycentrics in [0, 1]
    p = m.means.detach().numpy()[:, None, :]
    a, b, c = (mesh.vertices[mesh.faces[:, i]][None] for i in range(3))
    n = np.cross(b - a, c - a)
    n = n / np.linalg.norm(n, axis=-1, keepdims=True)
    plane = np.abs(((p - a) * n).sum(-1))
    v0, v1, v2 = b - a, c - a, p - a
    d00, d01, d11 = (v0 * v0).sum(-1), (v0 * v1).sum(-1), (v1 * v1).sum(-1)
    d20, d21 = (v2 * v0).sum(-1), (v2 * v1).sum(-1)
    den = d00 * d11 - d01 * d01
    v = (d11 * d20 - d01 * d21) / den
    w = (d00 * d21 - d01 * d20) / den
    inside = (v >= -1e-4) & (w >= -1e-4) & (v + w <= 1 + 1e-4)
    assert np.where(inside, plane, np.inf).min(axis=1).max() < 1e-5
    rgb = (m.params["sh0"][:, 0] * 0.28209479177387814 + 0.5).detach().numpy()
    palette = np.unique(np.round(mesh.visual.face_colors[:, :3] / 255.0, 3), axis=0)
    nearest = np.abs(rgb[:, None, :] - palette[None]).sum(-1).min(1)
    assert nearest.max() < 1e-2  # every Gaussian took a colour of the mesh


def test_points_init_from_ply(tmp_path):
    import trimesh

    pts = np.random.default_rng(0).uniform(-0.3, 0.3, (50, 3))
    cols = np.tile(np.array([[255, 0, 0, 255]], np.uint8), (50, 1))
    trimesh.PointCloud(pts, colors=cols).export(tmp_path / "cloud.ply")
    m = make(init="points", init_path=str(tmp_path / "cloud.ply"))
    assert m.num_gaussians == 50
    np.testing.assert_allclose(m.means.detach().numpy(), pts, atol=1e-6)
    rgb = m.params["sh0"][:, 0] * 0.28209479177387814 + 0.5
    assert torch.allclose(rgb, torch.tensor([1.0, 0.0, 0.0]).expand(50, 3), atol=1e-5)


def test_sh_degree_schedule_and_view_dependence():
    m = make(num_points=64, sh_degree=2, sh_degree_interval=100)
    assert [m.active_sh_degree(s) for s in (0, 99, 100, 250, 10_000)] == [0, 0, 1, 2, 2]
    with torch.no_grad():
        m.params["shN"][:, 0, :] = 1.0  # a degree-1 band makes colour depend on the view direction
    cams = orbit_cameras(2, 16, 16, elevation=0, distance=2.0)
    bg = torch.ones(2, 3)
    front, back = m.render(cams, background=bg, step=10_000).rgb
    assert (front - back).abs().max() > 0.05
    same0 = m.render(cams, background=bg, step=0).rgb  # degree 0 at step 0: view independent colours
    assert same0.shape == (2, 16, 16, 3)


def _fake_means2d(model, grad_value, cams=1):
    means2d = torch.zeros(cams, model.num_gaussians, 2, requires_grad=True)
    means2d.grad = torch.full_like(means2d, grad_value)
    radii = torch.ones(cams, model.num_gaussians, dtype=torch.int32)
    return {"means2d": means2d, "radii": radii}


def test_clone_split_prune_keep_optimizer_state_consistent():
    m = make(num_points=10, init_scale=0.01,
             densify={"refine_start": 0, "refine_every": 1, "refine_stop": 100, "grow_grad2d": 1e-4,
                      "grow_scale3d": 0.05, "prune_opa": 0.05, "max_gaussians": 1000})
    opt = adam_for(m)
    with torch.no_grad():
        m.params["log_scales"][5:] = math.log(0.2)  # large → split; the first five are small → clone
        m.params["opacity_logits"][9] = torch.logit(torch.tensor(0.01))  # transparent → pruned
    loss = sum(p.sum() for p in m.parameters())
    loss.backward()
    opt.step()  # create Adam state
    strategy = m.strategy
    largest_before = m.scales.max().item()
    extras = _fake_means2d(m, 1.0)
    info = strategy.step_post_backward(m, opt, step=1, extras=extras, width=64, height=64, generator=None)
    # 5 clones (+5), 5 splits (each 1 → 2, +5), then the pruned transparent one and its split children go
    assert info["cloned"] == 5 and info["split"] == 5
    assert info["pruned"] == 2  # the transparent large Gaussian was split into two transparent children
    assert m.num_gaussians == 10 + 5 + 5 - 2
    for group in opt.param_groups:
        (p,) = group["params"]
        assert any(p is q for q in m.parameters()), "optimizer holds a stale parameter"
        state = opt.state[p]
        assert state["exp_avg"].shape == p.shape and state["exp_avg_sq"].shape == p.shape
    # split children have scales / 1.6
    assert m.scales.max().item() == pytest.approx(largest_before / 1.6, rel=1e-5)
    # clones appended with zero Adam moments
    assert torch.count_nonzero(opt.state[m.params["means"]]["exp_avg"][10:15]) == 0


@pytest.mark.parametrize("revised", [False, True])
def test_revised_opacity_clone_keeps_the_rendered_coverage(revised):
    """A clone lands on its original; with ``revised_opacity`` (Bulò et al. 2024) both take 1 − √(1 − o), so the
    renderer (the splatting twin, not the strategy's arithmetic) composites them back to the original's alpha at the
    centre; 3DGS's plain copies give 1 − (1 − o)² there."""
    o = 0.6
    m = make(num_points=1, init_scale=0.05, init_opacity=o, sh_degree=0,
             densify={"refine_start": 0, "refine_every": 1, "refine_stop": 100, "grow_grad2d": 1e-4,
                      "grow_scale3d": 0.5, "revised_opacity": revised})
    with torch.no_grad():
        m.params["means"][:] = 0.0
    cams = orbit_cameras(1, 33, 33, elevation=0.0, distance=3.0, fovy=40.0)   # the mean on a pixel centre
    bg = torch.zeros(3)
    with torch.no_grad():
        before = m.render(cams, bg).alpha.max().item()
    info = m.strategy.step_post_backward(m, adam_for(m), step=1, extras=_fake_means2d(m, 1.0), width=33, height=33,
                                         generator=None)
    assert info["cloned"] == 1 and m.num_gaussians == 2
    with torch.no_grad():
        after = m.render(cams, bg).alpha.max().item()
    if revised:
        assert torch.allclose(m.opacities, torch.full((2,), 1 - math.sqrt(1 - o)), atol=1e-6)
        assert after == pytest.approx(before, abs=2e-3)
    else:
        assert torch.allclose(m.opacities, torch.full((2,), o), atol=1e-6)
        assert after == pytest.approx(1 - (1 - before) ** 2, abs=2e-3) and after > before + 0.1


def test_revised_opacity_split_children():
    o = 0.3
    m = make(num_points=4, init_scale=0.2, init_opacity=o,
             densify={"refine_start": 0, "refine_every": 1, "refine_stop": 100, "grow_grad2d": 1e-4,
                      "grow_scale3d": 0.05, "revised_opacity": True})
    info = m.strategy.step_post_backward(m, adam_for(m), step=1, extras=_fake_means2d(m, 1.0), width=8, height=8,
                                         generator=torch.Generator().manual_seed(0))
    assert info["split"] == 4 and m.num_gaussians == 8
    revised = m.opacities.detach()
    assert torch.allclose(1 - (1 - revised) ** 2, torch.full((8,), o), atol=1e-6)


def test_split_samples_from_the_gaussian():
    m = make(num_points=1, init_scale=0.1)
    with torch.no_grad():
        m.params["means"][:] = torch.tensor([0.3, -0.2, 0.1])
        m.params["log_scales"][:] = torch.log(torch.tensor([0.2, 0.05, 0.01]))
        m.params["quats"][:] = torch.nn.functional.normalize(torch.tensor([[0.9, 0.1, 0.3, -0.2]]), dim=-1)
    strategy = m.strategy
    gen = torch.Generator().manual_seed(0)
    children = []
    for _ in range(400):
        model = make(num_points=1, init_scale=0.1)
        model.load_state_dict(m.state_dict())
        strategy._split(model, None, torch.tensor([True]), gen)
        children.append(model.means.detach())
    pts = torch.cat(children)
    cov = torch.cov(pts.T)
    rot = quat_to_rotmat(m.quats.detach())[0]
    expected = rot @ torch.diag(torch.tensor([0.2, 0.05, 0.01]) ** 2) @ rot.T
    assert torch.allclose(pts.mean(0), m.means.detach()[0], atol=0.02)
    assert torch.allclose(cov, expected, atol=0.004)


def test_opacity_reset_and_budget():
    m = make(num_points=20, densify={"reset_every": 5, "prune_opa": 0.01, "refine_start": 1000})
    opt = adam_for(m)
    with torch.no_grad():
        m.params["opacity_logits"][:] = 3.0
    m.strategy.step_post_backward(m, opt, step=5, extras={}, width=8, height=8, generator=None)
    assert torch.allclose(m.opacities, torch.full((20,), 0.02), atol=1e-5)
    # growth never passes max_gaussians
    m = make(num_points=20, init_scale=0.001,
             densify={"refine_start": 0, "refine_every": 1, "grow_grad2d": 0.0, "max_gaussians": 25})
    m.strategy.step_post_backward(m, adam_for(m), step=1, extras=_fake_means2d(m, 1.0), width=8, height=8,
                                  generator=None)
    assert m.num_gaussians == 25


def test_sh3_ply_layout(tmp_path):
    from plyfile import PlyData

    from dreamkit.export.ply import export_gaussians_ply

    m = make(num_points=7, sh_degree=3)
    with torch.no_grad():
        m.params["shN"].copy_(torch.arange(7 * 15 * 3, dtype=torch.float32).reshape(7, 15, 3))
    export_gaussians_ply(m, tmp_path / "g.ply")
    v = PlyData.read(str(tmp_path / "g.ply"))["vertex"]
    names = [p.name for p in v.properties]
    assert names == (["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
                     + [f"f_rest_{i}" for i in range(45)]
                     + ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"])
    # channel-major: f_rest_0..14 are the red coefficients of bands 1..15, then green, then blue
    rest = np.stack([v[f"f_rest_{i}"] for i in range(45)], 1)
    shn = m.params["shN"].detach().numpy()
    np.testing.assert_allclose(rest[:, :15], shn[:, :, 0])
    np.testing.assert_allclose(rest[:, 15:30], shn[:, :, 1])
    np.testing.assert_allclose(np.stack([v["scale_0"], v["scale_1"], v["scale_2"]], 1),
                               m.params["log_scales"].detach().numpy(), atol=1e-6)
    q = np.stack([v[f"rot_{i}"] for i in range(4)], 1)
    np.testing.assert_allclose(np.linalg.norm(q, axis=1), 1.0, atol=1e-6)


def test_bound_radius_projects_means_onto_the_ball_after_each_step():
    from dreamkit.errors import ConfigError

    m = make(num_points=4, init_scale=0.05, bound_radius=0.5, densify={"enabled": False})
    opt = adam_for(m)
    with torch.no_grad():
        m.params["means"][:] = torch.tensor([[0.1, 0.2, 0.0], [0.0, 0.9, 0.0], [0.6, 0.0, 0.8], [0.0, 0.0, -0.3]])
    inside_before = m.means[[0, 3]].detach().clone()
    cams = orbit_cameras(2, 16, 16)
    out = m.render(cams)
    out.rgb.sum().backward()
    opt.zero_grad()  # a step with zero gradient does not move the means; only the projection acts
    opt.step()
    m.post_step(0, out, opt, cams)
    means = m.means.detach()
    # outside points land on the sphere along their own direction: (0, 0.9, 0) → (0, 0.5, 0); (0.6, 0, 0.8) → ×0.5
    assert torch.allclose(means[1], torch.tensor([0.0, 0.5, 0.0]), atol=1e-6)
    assert torch.allclose(means[2], torch.tensor([0.3, 0.0, 0.4]), atol=1e-6)
    assert torch.equal(means[[0, 3]], inside_before)  # inside points are untouched
    assert m.means is opt.param_groups[0]["params"][0]  # projected in place: the optimizer keeps its parameter
    with pytest.raises(ConfigError, match="bound_radius"):
        make(num_points=4, bound_radius=-1.0)


def test_alpha_regularizers_pull_opacity_down_and_the_recipe_accepts_them():
    """Gaussians share NeRF's alpha regularisers (values checked by hand in test_nerf.py): the sparsity term's
    gradient lowers every visible Gaussian's opacity, and the recipe's loss check knows both names."""
    m = make(num_points=50, init_radius=0.3, init_opacity=0.5)
    assert set(m.loss_names) == {"sparsity", "opaque", "containment"}  # containment: with a layout only
    cams = orbit_cameras(2, 24, 24, elevation=20.0, distance=3.0, fovy=40.0)
    out = m.render(cams, torch.ones(3))
    losses = m.regularizers(out, 0)
    assert set(losses) == {"loss_sparsity", "loss_opaque"}
    (grad,) = torch.autograd.grad(losses["loss_sparsity"], m.params["opacity_logits"])
    visible = (out.extras["radii"] > 0).any(0)   # [N], seen by some camera
    assert bool(visible.all()) and bool((grad > 0).all())
    assert float(out.alpha.detach().max()) > 0.5


def test_max_scale_caps_every_sigma_after_each_step_in_place():
    """representation.max_scale clamps each σ (per axis) after the step; smaller ones, means and the optimizer's
    parameter are untouched; 0 leaves the scales alone."""
    m = make(num_points=3, init_scale=0.05, max_scale=0.02, densify={"enabled": False})
    opt = adam_for(m)
    with torch.no_grad():
        m.params["log_scales"][:] = torch.log(torch.tensor([[0.01, 0.03, 0.005], [0.2, 0.2, 0.2],
                                                            [0.019, 0.001, 0.02]]))
    means_before = m.means.detach().clone()
    cams = orbit_cameras(2, 16, 16)
    out = m.render(cams)
    out.rgb.sum().backward()
    opt.zero_grad()
    opt.step()
    m.post_step(0, out, opt, cams)
    want = torch.tensor([[0.01, 0.02, 0.005], [0.02, 0.02, 0.02], [0.019, 0.001, 0.02]])
    assert torch.allclose(m.scales.detach(), want, rtol=1e-5)
    assert torch.equal(m.means.detach(), means_before)
    assert any(q is m.params["log_scales"] for g in opt.param_groups for q in g["params"])  # clamped in place
    off = make(num_points=1, init_scale=0.5, densify={"enabled": False})
    before = off.scales.detach().clone()
    off.post_step(0, off.render(cams), None, cams)
    assert torch.equal(off.scales.detach(), before)
    with pytest.raises(ConfigError, match="max_scale"):
        make(num_points=1, max_scale=-0.01)


def test_object_radius_scales_the_gaussians_toward_the_radius_keeping_their_shape():
    """representation.object_radius: each step scales means (about the opaque Gaussians' centre) and scales alike by
    at most ±rate, so the radius approaches the target geometrically and the shape (means relative to the centre,
    and the ratio of every Gaussian's scales) is kept; transparent Gaussians do not count in the radius."""
    m = make(num_points=2000, init_radius=1.0, init_opacity=0.5, object_radius=0.5, object_radius_rate=0.05)
    with torch.no_grad():
        m.params["means"].add_(torch.tensor([0.2, -0.1, 0.0]))  # off the origin: the centre is the object's own
        m.params["opacity_logits"][:100] = -10.0  # transparent ones: ignored by the radius
    centre0, r0 = m.object_radius()
    assert abs(float(r0) - 0.99) < 0.03 and torch.allclose(centre0, torch.tensor([0.2, -0.1, 0.0]), atol=0.05)
    rel0 = m.means.detach() - centre0
    log_scales0 = m.params["log_scales"].detach().clone()
    first = m.hold_object_radius()
    assert first == pytest.approx(0.95)  # clamped at the rate
    for _ in range(40):
        m.hold_object_radius()
    centre, r = m.object_radius()
    assert float(r) == pytest.approx(0.5, rel=0.01)
    assert torch.allclose(centre, centre0, atol=1e-4)
    total = float(r) / float(r0)
    assert torch.allclose(m.means.detach() - centre, rel0 * total, atol=1e-4)
    assert torch.allclose(m.params["log_scales"].detach() - log_scales0,
                          torch.full_like(log_scales0, math.log(total)), atol=1e-3)


def test_object_radius_of_splats_reaches_each_gaussians_rendered_alpha_half_contour():
    """object_radius_of=splats adds σ_max·√(2 ln 2o) to each centre's distance: where a lone Gaussian's rendered alpha
    falls to 0.5. Checked against the renderer (the area of alpha ≥ 0.5 of one isotropic Gaussian seen head-on), then
    on a shell of such Gaussians: means radius 0.4, splats radius 0.4 + that reach."""
    sigma, o = 0.1, 0.9
    reach = sigma * math.sqrt(2 * math.log(2 * o))
    m = make(num_points=1, init_radius=0.0, init_opacity=o)
    with torch.no_grad():
        m.params["means"].zero_()
        m.params["log_scales"].fill_(math.log(sigma))
    cams = orbit_cameras(1, 129, 129, elevation=0.0, distance=3.0, fovy=40.0)
    alpha = m.render(cams).alpha[0, ..., 0]
    focal = 129 / 2 / math.tan(math.radians(20.0))
    radius_px = math.sqrt(float((alpha >= 0.5).sum()) / math.pi)
    assert radius_px == pytest.approx(reach * focal / 3.0, rel=0.05)
    shell = make(num_points=500, init_radius=1.0, init_opacity=o, object_radius_of="splats")
    with torch.no_grad():
        shell.params["means"].copy_(torch.nn.functional.normalize(shell.means, dim=-1) * 0.4)
        shell.params["log_scales"].fill_(math.log(sigma))
    _, r_means = shell.object_radius()
    _, r_splats = shell.object_radius(of="splats")
    assert float(r_means) == pytest.approx(0.4, abs=0.01)
    assert float(r_splats) == pytest.approx(0.4 + reach, abs=0.01)
    with pytest.raises(ConfigError, match="object_radius_of"):
        make(object_radius_of="pixels")


def test_knn_scale_init_is_exact_for_a_cloud_away_from_the_origin():
    """3DGS's scale initialisation (mean distance to the 3 nearest neighbours) against float64 brute force, across
    a chunk boundary. torch.cdist's default matrix-product form misses by 0.4% here (|x|² ≫ the spacing) and came out
    differently from one process to another, so one seed gave two different fits."""
    g = torch.Generator().manual_seed(0)
    points = torch.randn(700, 3, generator=g) * 0.6 + 5.0
    got = knn_mean_distance(points, k=3, chunk=256)
    assert got.dtype == torch.float32 and got.shape == (700,)
    torch.testing.assert_close(got.double(), knn_reference(points), rtol=2e-6, atol=0)


def test_unseen_alpha_by_hand_and_on_gaussians():
    """loss_unseen = mean w·alpha, w = exp(−(‖c − bg‖ / sigma)²) with c = (rgb − (1 − alpha)·bg) / alpha the
    composited matter's colour: worked by hand on four pixels (a faint red fringe gets no weight, although its
    composite is within 0.11 of the background); on Gaussians its gradient takes opacity from a background-coloured
    Gaussian and none from a red one."""
    from dreamkit.system import unseen_alpha

    bg = torch.tensor([[0.9, 0.9, 0.9]])
    red = torch.tensor([0.8, 0.1, 0.1])
    alphas = [0.5, 0.8, 1.0, 0.1]
    pixels = [torch.full((3,), 0.9),                    # background-coloured matter, half opaque
              torch.tensor([0.95, 0.9, 0.9]),           # pale pink matter c = (0.9625, 0.9, 0.9)
              torch.tensor([0.9, 0.2, 0.2]),            # saturated, opaque
              0.1 * red + 0.9 * 0.9]                    # the fringe of a red object
    rgb = torch.stack(pixels).view(1, 2, 2, 3)
    alpha = torch.tensor(alphas).view(1, 2, 2, 1).requires_grad_(True)
    sigma = 0.1
    w = [1.0, math.exp(-(0.0625 / sigma) ** 2), math.exp(-(math.sqrt(0.7 ** 2 + 0.7 ** 2) / sigma) ** 2),
         math.exp(-(math.sqrt(0.1 ** 2 + 0.8 ** 2 + 0.8 ** 2) / sigma) ** 2)]
    loss = unseen_alpha(rgb.requires_grad_(True), alpha, bg, sigma)
    assert float(loss.detach()) == pytest.approx(sum(wi * a for wi, a in zip(w, alphas)) / 4, rel=1e-5)
    g_alpha, g_rgb = torch.autograd.grad(loss, [alpha, rgb], allow_unused=True)
    assert torch.allclose(g_alpha.view(-1), torch.tensor(w) / 4, rtol=1e-5)
    assert float(g_alpha.view(-1)[3]) < 1e-30  # the fringe: no pull, so silhouettes are not eaten
    assert g_rgb is None  # the weight is a constant of the step: colours get no gradient

    # two Gaussians side by side, one the background's grey, one red
    m = make(num_points=2, init_opacity=0.6)
    with torch.no_grad():
        m.params["means"].copy_(torch.tensor([[-0.4, 0.0, 0.0], [0.4, 0.0, 0.0]]))
        m.params["log_scales"].fill_(math.log(0.12))
        m.params["sh0"][:, 0] = (torch.stack([torch.full((3,), 0.9), red]) - 0.5) / 0.28209479
    cams = orbit_cameras(1, 32, 32, elevation=0.0, distance=3.0, fovy=40.0)
    out = m.render(cams, bg.expand(1, 3))
    (grad,) = torch.autograd.grad(unseen_alpha(out.rgb, out.alpha, bg, sigma), m.params["opacity_logits"])
    assert float(grad[0]) > 0 and abs(float(grad[1])) < 1e-3 * float(grad[0])


def test_lambda_unseen_is_a_recipe_term_and_sigma_is_checked():
    from test_bench import _small_system

    from dreamkit.config import load_config
    from dreamkit.errors import ConfigError

    system, optimizers = _small_system("gs_sds", "cpu", ["loss.lambda_unseen=100"])
    result = system.optimization_step(0, optimizers)
    assert float(result.terms["loss_unseen"].detach()) > 0
    with pytest.raises(ConfigError, match="unseen_sigma"):
        load_config("gs_sds.yaml", ["background.unseen_sigma=0"])
