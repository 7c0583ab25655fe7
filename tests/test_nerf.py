"""NeRF / triplane: hash encoding, rays, compositing, occupancy skipping, regularisers, a short oracle fit."""
from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch

from dreamkit.cameras import cameras_from_spherical, orbit_cameras
from dreamkit.render.volume import (OccupancyGrid, composite, generate_rays, ray_aabb_intersect, render_field,
                                    weights_from_density)
from dreamkit.representations.encodings import FrequencyEncoding, HashGridEncoding, HASH_PRIMES
from dreamkit.representations.nerf import NeRFConfig, NeRFModel
from dreamkit.representations.triplane import TriplaneConfig, TriplaneModel
from dreamkit.run import run_folders
from dreamkit.types import RenderOutput


def slow_level(enc: HashGridEncoding, x: torch.Tensor, level: int) -> torch.Tensor:
    """Reference written independently of the module: loop over points and the 8 corners of their cell."""
    res = enc.resolutions[level]
    sizes = [min((r + 1) ** 3, 2 ** enc.log2_hashmap_size) for r in enc.resolutions]
    offset = sum(sizes[:level])
    dense = (res + 1) ** 3 <= 2 ** enc.log2_hashmap_size
    table = enc.embeddings.detach()
    out = torch.zeros(x.shape[0], enc.n_features_per_level)
    for n in range(x.shape[0]):
        p = [float(v) * res for v in x[n]]
        base = [min(int(math.floor(v)), res - 1) for v in p]
        for corner in range(8):
            bits = [(corner >> d) & 1 for d in range(3)]
            c = [base[d] + bits[d] for d in range(3)]
            w = 1.0
            for d in range(3):
                f = p[d] - base[d]
                w *= f if bits[d] else 1.0 - f
            if dense:
                i = c[0] + (res + 1) * c[1] + (res + 1) ** 2 * c[2]
            else:
                i = ((c[0] * HASH_PRIMES[0]) ^ (c[1] * HASH_PRIMES[1]) ^ (c[2] * HASH_PRIMES[2])) % sizes[level]
            out[n] += w * table[offset + i]
    return out


def test_hash_encoding_matches_slow_reference_dense_and_hashed():
    enc = HashGridEncoding(n_levels=3, n_features_per_level=2, log2_hashmap_size=12, base_resolution=8,
                           per_level_scale=2.0, init_scale=1.0)
    assert enc.resolutions == [8, 16, 32]
    assert enc._dense_levels == [True, False, False]  # 9³ ≤ 4096 < 17³
    x = torch.rand(12, 3, generator=torch.Generator().manual_seed(1))
    x[0] = 1.0  # the far corner of the box
    x[1] = 0.0
    out = enc(x).detach()
    assert out.shape == (12, 6)
    for level in range(3):
        torch.testing.assert_close(out[:, 2 * level:2 * level + 2], slow_level(enc, x, level), atol=1e-5, rtol=1e-5)


def test_hash_encoding_is_continuous_and_exact_at_vertices():
    enc = HashGridEncoding(n_levels=2, n_features_per_level=2, log2_hashmap_size=14, base_resolution=4,
                           per_level_scale=2.0, init_scale=1.0)
    # crossing a cell boundary changes the output by O(step)
    x = torch.tensor([[0.25 - 1e-5, 0.4, 0.6], [0.25 + 1e-5, 0.4, 0.6]])
    y = enc(x).detach()
    assert (y[0] - y[1]).abs().max() < 1e-3
    # at a vertex of the coarse level the feature is that vertex's entry
    v = torch.tensor([[0.25, 0.5, 0.75]])  # vertex (1, 2, 3) of the 4-cell level
    row = 1 + 5 * 2 + 25 * 3
    torch.testing.assert_close(enc(v).detach()[0, :2], enc.embeddings.detach()[row])


def test_frequency_encoding_shape_and_values():
    enc = FrequencyEncoding(3, n_frequencies=2)
    x = torch.tensor([[0.5, 0.0, 0.25]])
    y = enc(x)
    assert y.shape == (1, 3 * 5)
    torch.testing.assert_close(y[0, :3], x[0])
    torch.testing.assert_close(y[0, 3:6], torch.sin(math.pi * x[0]))


def test_center_ray_of_front_camera_points_down_minus_z_through_origin():
    cams = cameras_from_spherical(torch.tensor([0.0]), torch.tensor([0.0]), torch.tensor([3.0]),
                                  torch.tensor([40.0]), 5, 5)
    rays = generate_rays(cams)
    centre = 2 * 5 + 2  # pixel (2, 2): its centre is (2.5, 2.5) = the principal point
    torch.testing.assert_close(rays.directions[centre], torch.tensor([0.0, 0.0, -1.0]), atol=1e-6, rtol=0)
    torch.testing.assert_close(rays.origins[centre], torch.tensor([0.0, 0.0, 3.0]))
    # the top-left pixel looks up (+Y) and left (−X) in the world
    assert rays.directions[0, 1] > 0 and rays.directions[0, 0] < 0
    t_near, t_far, hit = ray_aabb_intersect(rays.origins[centre:centre + 1], rays.directions[centre:centre + 1],
                                            torch.tensor([-0.5, -0.5, -0.5, 0.5, 0.5, 0.5]))
    assert bool(hit) and abs(float(t_near) - 2.5) < 1e-5 and abs(float(t_far) - 3.5) < 1e-5


def test_compositing_matches_hand_computed_three_samples():
    sig = torch.tensor([[1.0, 2.0, 3.0]])
    delta = torch.tensor([[0.5, 0.5, 0.5]])
    a = [1 - math.exp(-0.5), 1 - math.exp(-1.0), 1 - math.exp(-1.5)]
    T = [1.0, 1 - a[0], (1 - a[0]) * (1 - a[1])]
    w = [T[i] * a[i] for i in range(3)]
    weights, trans, alphas = weights_from_density(sig, delta)
    torch.testing.assert_close(weights[0], torch.tensor(w), atol=1e-6, rtol=0)
    torch.testing.assert_close(trans[0], torch.tensor(T), atol=1e-6, rtol=0)
    rgb = torch.tensor([[[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]]])
    t = torch.tensor([[1.0, 2.0, 3.0]])
    out = composite(weights, rgb, t)
    torch.testing.assert_close(out["rgb"][0], torch.tensor(w), atol=1e-6, rtol=0)
    torch.testing.assert_close(out["opacity"][0, 0], torch.tensor(sum(w)), atol=1e-6, rtol=0)
    torch.testing.assert_close(out["depth"][0, 0], torch.tensor(w[0] + 2 * w[1] + 3 * w[2]), atol=1e-6, rtol=0)


def small_nerf(**kw) -> NeRFModel:
    cfg = NeRFConfig(n_levels=3, base_resolution=8, per_level_scale=1.5, hidden_dim=16, num_samples=32,
                     occ_resolution=16, **kw)
    return NeRFModel(cfg, torch.Generator().manual_seed(0))


def test_gradient_of_rendered_rgb_reaches_the_encoding_and_background_composites():
    model = small_nerf()
    cams = orbit_cameras(2, 12, 12, elevation=20, distance=2.75)
    bg = torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 1.0]])
    out = model.render(cams, background=bg)
    assert out.rgb.shape == (2, 12, 12, 3) and out.alpha.shape == (2, 12, 12, 1) and out.depth.shape == (2, 12, 12, 1)
    # corner pixels miss the blob: they show the background
    torch.testing.assert_close(out.rgb[:, 0, 0], bg, atol=1e-3, rtol=0)
    out.rgb.mean().backward()
    assert model.encoding.embeddings.grad is not None and model.encoding.embeddings.grad.abs().sum() > 0
    assert all(p.grad is not None for p in model.density_net.parameters())


def test_occupancy_grid_all_occupied_equals_dense_and_empty_cells_are_skipped():
    model = small_nerf(early_stop_eps=0.0)
    model.eval()
    cams = orbit_cameras(1, 16, 16, elevation=20, distance=2.75)
    rays = generate_rays(cams)
    with torch.no_grad():
        dense = render_field(rays, model.aabb, model.density, model.field, n_samples=32, occupancy=None,
                             early_stop_eps=0.0)
        grid = OccupancyGrid(model.aabb, 16)
        full = render_field(rays, model.aabb, model.density, model.field, n_samples=32, occupancy=grid,
                            early_stop_eps=0.0)
        torch.testing.assert_close(full["rgb"], dense["rgb"])
        torch.testing.assert_close(full["opacity"], dense["opacity"])
        # empty the upper half of the box: those samples are neither evaluated nor contribute
        upper = grid._cells[:, 1] >= 8
        grid.occupied[upper] = False
        calls = []

        def counting_field(p, d):
            calls.append(p)
            return model.field(p, d)

        part = render_field(rays, model.aabb, model.density, counting_field, n_samples=32, occupancy=grid,
                            early_stop_eps=0.0)
        evaluated = torch.cat(calls)
        assert part["num_samples"] < dense["num_samples"]
        assert (evaluated[:, 1] < 1e-6).all()  # only the lower half (y < 0) was evaluated
        # early stop drops samples behind opaque surfaces but keeps the image
        stopped = render_field(rays, model.aabb, model.density, model.field, n_samples=32, occupancy=None,
                               early_stop_eps=1e-4)
        assert stopped["num_samples"] < dense["num_samples"]
        torch.testing.assert_close(stopped["rgb"], dense["rgb"], atol=2e-3, rtol=0)


def test_occupancy_update_marks_empty_space_and_state_dict_round_trips():
    model = small_nerf()
    cams = orbit_cameras(1, 8, 8)
    out = model.render(cams, background=torch.ones(1, 3))
    info = model.post_step(0, out, None, cams, torch.Generator().manual_seed(0))
    frac = info["occupancy"]
    assert 0.05 < frac < 0.9  # the density blob is occupied, the box corners are not
    corner = model.occupancy.cell_index(torch.tensor([[0.59, 0.59, 0.59]]))
    assert not bool(model.occupancy.occupied[corner])
    clone = small_nerf()
    clone.load_state_dict(model.state_dict())
    assert torch.equal(clone.occupancy.occupied, model.occupancy.occupied)


def test_sampling_generator_state_makes_training_renders_repeatable():
    model = small_nerf()
    model.train()
    cams = orbit_cameras(1, 8, 8)
    state = model.extra_state_dict()
    first = model.render(cams, background=torch.ones(1, 3)).rgb
    second = model.render(cams, background=torch.ones(1, 3)).rgb
    assert not torch.equal(first, second)  # stratified jitter differs between steps
    model.load_extra_state_dict(state)
    torch.testing.assert_close(model.render(cams, background=torch.ones(1, 3)).rgb, first, atol=0, rtol=0)


def test_regularisers_on_hand_examples():
    model = small_nerf()
    alpha = torch.tensor([0.0, 1.0, 0.5, 0.5]).view(1, 2, 2, 1)
    out = RenderOutput(rgb=torch.zeros(1, 2, 2, 3), alpha=alpha, depth=torch.zeros(1, 2, 2, 1),
                       extras={"orient": torch.tensor([[[0.0, 0.5], [1.0, 0.5]]])})
    losses = model.regularizers(out, 0)
    assert set(losses) == {"loss_sparsity", "loss_opaque", "loss_orient"}
    expected_sparsity = (math.sqrt(0.01) + math.sqrt(1.01) + 2 * math.sqrt(0.26)) / 4
    assert abs(float(losses["loss_sparsity"]) - expected_sparsity) < 1e-5
    assert abs(float(losses["loss_opaque"]) - math.log(2) / 2) < 1e-3  # H(0)≈H(1)≈0, H(0.5)=ln 2
    assert abs(float(losses["loss_orient"]) - 0.5) < 1e-6


def test_orientation_term_penalises_normals_facing_away():
    # one ray along −z; a single opaque sample whose normal points along the ray (away from the camera)
    from dreamkit.render.volume import Rays

    rays = Rays(torch.tensor([[0.0, 0.0, 2.0]]), torch.tensor([[0.0, 0.0, -1.0]]), torch.ones(1))
    aabb = torch.tensor([-0.5, -0.5, -0.5, 0.5, 0.5, 0.5])

    def field(normal):
        return lambda p, d: {"sigma": torch.full((p.shape[0],), 100.0), "rgb": torch.ones(p.shape[0], 3),
                             "normal": normal.expand(p.shape[0], 3)}

    away = render_field(rays, aabb, lambda p: torch.full((p.shape[0],), 100.0), field(torch.tensor([0.0, 0, -1])),
                        n_samples=4, early_stop_eps=0)
    toward = render_field(rays, aabb, lambda p: torch.full((p.shape[0],), 100.0), field(torch.tensor([0.0, 0, 1])),
                          n_samples=4, early_stop_eps=0)
    assert abs(float(away["orient"][0]) - 1.0) < 1e-4 and float(toward["orient"][0]) == 0.0


@pytest.mark.parametrize("normals", ["analytic", "finite_difference"])
def test_normals_of_the_density_blob_point_outwards(normals):
    model = small_nerf(normals=normals, shading="diffuse", blob_density=5.0)
    with torch.no_grad():
        for p in model.density_net.parameters():
            p.zero_()  # density = the blob alone
    pts = torch.tensor([[0.3, 0.0, 0.0], [0.0, -0.3, 0.0], [0.0, 0.0, 0.3]])
    out = model.field(pts)
    torch.testing.assert_close(out["normal"], torch.nn.functional.normalize(pts, dim=-1), atol=1e-3, rtol=0)


def test_triplane_renders_and_gets_gradients():
    model = TriplaneModel(TriplaneConfig(plane_channels=4, plane_resolution=16, hidden_dim=16, num_samples=24,
                                         occ_resolution=16), torch.Generator().manual_seed(0))
    cams = orbit_cameras(2, 10, 10)
    out = model.render(cams, background=torch.ones(2, 3))
    assert out.rgb.shape == (2, 10, 10, 3)
    out.rgb.mean().backward()
    assert model.planes.grad is not None and model.planes.grad.abs().sum() > 0
    names = [g["name"] for g in model.parameter_groups()]
    assert names == ["triplane.planes", "triplane.network"]


def test_importing_nerf_does_not_import_cuda_libraries():
    code = ("import sys, dreamkit.representations.nerf, dreamkit.representations.triplane, dreamkit.render.volume;"
            "bad = [m for m in ('tinycudann', 'nerfacc') if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_short_oracle_fit_improves_held_out_psnr(tmp_path):
    from dreamkit.callbacks import psnr_db
    from dreamkit.cli import main
    from dreamkit.run import held_out_renders
    from dreamkit.system import build_representation

    # 45 steps at 32×32: anneal t faster and raise the learning rates so that few steps still converge
    code = main(["fit", "--config", "nerf_oracle.yaml", f"output_dir={tmp_path}", "trainer.max_steps=45",
                 "trainer.progress=false", "trainer.val_every=0", "trainer.checkpoint_every=0",
                 "camera.width=32", "camera.height=32", "prior.resolution=32", "camera.batch_size=2",
                 "representation.num_samples=24", "guidance.max_step_percent=[0,0.98,0.3,30]",
                 "representation.lr_encoding=0.02", "representation.lr_network=0.003", "export.turntable=false"])
    assert code == 0
    (run,) = run_folders(tmp_path)
    cfg, _, cams, images, targets = held_out_renders(run)
    with torch.no_grad():
        initial = build_representation(cfg, torch.Generator().manual_seed(int(cfg.seed))).eval()
        psnr0 = psnr_db(initial.render(cams, background=torch.ones(len(cams), 3)).rgb.clamp(0, 1), targets)
    psnr1 = psnr_db(images, targets)
    assert psnr1 > psnr0 + 3.0, (psnr0, psnr1)


def test_volume_models_export_through_marching_cubes():
    """NeRF and triplane implement the mesh-export protocol (query_density / query_color / mesh_bound)."""
    import numpy as np
    from omegaconf import OmegaConf

    from dreamkit.export.extract import mesh_from_representation
    from dreamkit.representations.nerf import NeRFConfig, NeRFModel
    from dreamkit.representations.triplane import TriplaneConfig, TriplaneModel

    for cls, cfg_cls in ((NeRFModel, NeRFConfig), (TriplaneModel, TriplaneConfig)):
        model = cls(OmegaConf.structured(cfg_cls(blob_density=10.0, blob_radius=0.4)), torch.Generator().manual_seed(0))
        export_cfg = OmegaConf.create({"mesh_resolution": 48, "mesh_threshold": 10.0, "mesh_components": 1,
                                       "mesh_faces": 5000})
        mesh, color_fn = mesh_from_representation(model, export_cfg)
        radius = np.linalg.norm(mesh.verts, axis=1)
        assert len(mesh.faces) > 100 and radius.max() < 0.6  # the density blob's iso-surface, inside the box
        assert color_fn(torch.zeros(4, 3)).shape == (4, 3)
