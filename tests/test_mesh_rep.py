"""Mesh and DMTet representations: marching tetrahedra against a sphere's analytic area and volume, gradients to the
SDF, mesh regularisers against hand-computed values, a short oracle fit, init_from, and GLB export (validator)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from dreamkit.cameras import orbit_cameras
from dreamkit.checkpoint import load_checkpoint
from dreamkit.cli import main
from dreamkit.errors import ConfigError
from dreamkit.run import run_folders
from dreamkit.representations.dmtet import (DMTetConfig, DMTetModel, load_tet_grid, make_tet_grid, marching_tets,
                                            sdf_sign_regularizer, tet_edges)
from dreamkit.representations.mesh import (MeshConfig, MeshModel, face_adjacency, laplacian_loss, laplacian_vectors,
                                           normal_consistency)

FAST = ["trainer.progress=false", "export.formats=[]", "export.turntable=false"]


def area_volume(verts: torch.Tensor, faces: torch.Tensor) -> tuple[float, float]:
    tri = verts[faces].double()
    cross = torch.linalg.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0], dim=-1)
    volume = (tri[:, 0] * torch.linalg.cross(tri[:, 1], tri[:, 2], dim=-1)).sum() / 6  # divergence theorem
    return float(cross.norm(dim=-1).sum().detach() / 2), float(volume.detach())


def test_tet_grid_asset_is_the_generated_grid_and_positively_oriented():
    verts, tets = load_tet_grid("tets/tets_32.npz", 32)
    v_ref, t_ref = make_tet_grid(32)
    assert verts.shape == (33 ** 3, 3) and tets.shape == (6 * 32 ** 3, 4)
    np.testing.assert_array_equal(tets.numpy(), t_ref)
    assert float(verts.abs().max()) == 1.0
    p = verts[tets].double()
    vol = torch.einsum("ij,ij->i", torch.linalg.cross(p[:, 1] - p[:, 0], p[:, 2] - p[:, 0], dim=-1), p[:, 3] - p[:, 0])
    assert bool((vol > 0).all())
    # the tets fill the cube exactly: Σ volumes = 2³
    assert float(vol.sum() / 6) == pytest.approx(8.0, rel=1e-9)


def test_marching_tets_sphere_closed_with_analytic_area_and_volume():
    verts01, tets = load_tet_grid("tets/tets_32.npz", 32)
    r = 0.7
    sdf = verts01.norm(dim=-1) - r
    v, f = marching_tets(verts01, sdf, tets)
    # closed 2-manifold: every edge in exactly two faces, Euler characteristic 2
    e = torch.sort(f[:, [[0, 1], [1, 2], [2, 0]]].reshape(-1, 2), dim=1).values
    _, counts = torch.unique(e, dim=0, return_counts=True)
    assert bool((counts == 2).all())
    assert v.shape[0] - counts.shape[0] + f.shape[0] == 2
    area, volume = area_volume(v, f)
    # independent reference: the sphere's analytic area 4πr² and volume 4/3·πr³ (a polyhedron inscribed in the
    # level set is a little smaller); a positive volume means faces are wound outwards
    assert area == pytest.approx(4 * math.pi * r * r, rel=0.02)
    assert volume == pytest.approx(4 / 3 * math.pi * r ** 3, rel=0.02)
    assert volume > 0


def test_gradients_reach_sdf_and_deformation():
    cfg = OmegaConf.structured(DMTetConfig(tet_grid="", tet_resolution=8, init_radius=0.4))
    model = DMTetModel(cfg).train()
    cams = orbit_cameras(2, 24, 24, elevation=20.0, distance=2.5, fovy=40.0)
    out = model.render(cams, background=torch.ones(2, 3))
    loss = (out.rgb - 0.2).pow(2).mean() + sum(model.regularizers(out, 0).values())
    loss.backward()
    g = model.params["sdf"].grad
    near = (model.grid.norm(dim=-1) - 0.4).abs() < 2 * model.cell
    assert g is not None and float(g[near].abs().sum()) > 0
    assert float(g[~near].abs().sum()) == 0.0  # far vertices do not touch the surface
    assert float(model.params["deform"].grad.abs().sum()) > 0
    # d(surface area)/d(sdf) of one vertex next to the surface matches finite differences
    grid, tets = model.grid.double(), model.tets
    sdf = (grid.norm(dim=-1) - 0.4).detach().requires_grad_(True)
    v, f = marching_tets(grid, sdf, tets)
    area = area_volume(v, f)[0]
    tri = v[f]
    torch.linalg.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0], dim=-1).norm(dim=-1).sum().div(2).backward()
    i = int(torch.nonzero(near).squeeze(1)[0])
    eps = 1e-6
    bumped = sdf.detach().clone()
    bumped[i] += eps
    area_plus = area_volume(*marching_tets(grid, bumped, tets))[0]
    assert float(sdf.grad[i]) == pytest.approx((area_plus - area) / eps, rel=1e-3, abs=1e-6)


def pyramid() -> tuple[torch.Tensor, torch.Tensor]:
    """Apex (0, 0, 1) over the square (±1, 0, 0), (0, ±1, 0); four side faces, open base."""
    verts = torch.tensor([[0.0, 0, 1], [1, 0, 0], [0, 1, 0], [-1, 0, 0], [0, -1, 0]])
    faces = torch.tensor([[0, 1, 2], [0, 2, 3], [0, 3, 4], [0, 4, 1]])
    return verts, faces


def test_normal_consistency_and_laplacian_hand_computed():
    verts, faces = pyramid()
    assert face_adjacency(faces).shape[0] == 4  # the four apex edges; base edges are boundary
    # adjacent side normals (1,1,1)/√3 and (−1,1,1)/√3: cos = 1/3, so every pair costs 2/3
    assert float(normal_consistency(verts, faces)) == pytest.approx(2 / 3, abs=1e-6)
    # uniform Laplacian: apex δ = (0,0,1) (‖δ‖² = 1); base (1,0,0) has neighbours apex, (0,±1,0): δ = (1, 0, −1/3)
    # (‖δ‖² = 10/9), likewise the other base vertices: mean = (1 + 4·10/9)/5 = 49/45
    torch.testing.assert_close(laplacian_vectors(verts, faces)[:2], torch.tensor([[0, 0, 1.0], [1, 0, -1 / 3]]))
    assert float(laplacian_loss(verts, faces)) == pytest.approx(49 / 45, abs=1e-6)
    # a flat fold: two coplanar faces cost 0
    flat = torch.tensor([[0.0, 0, 0], [1, 0, 0], [0, 1, 0], [1, 1, 0]])
    assert float(normal_consistency(flat, torch.tensor([[0, 1, 2], [1, 3, 2]]))) == pytest.approx(0.0, abs=1e-7)


def test_cotangent_laplacian_vanishes_on_a_flat_irregular_fan():
    # an interior vertex off the centroid of its planar one-ring: the cotangent Laplacian is 0 (it reproduces
    # linear functions), the uniform one is not
    ring = torch.tensor([[1.0, 0, 0], [0.3, 0.9, 0], [-0.8, 0.4, 0], [-0.6, -0.7, 0], [0.5, -0.8, 0]])
    verts = torch.cat([torch.tensor([[0.1, 0.05, 0.0]]), ring])
    faces = torch.tensor([[0, 1 + k, 1 + (k + 1) % 5] for k in range(5)])
    assert float(laplacian_vectors(verts, faces, "cotangent")[0].norm()) < 1e-6
    assert float(laplacian_vectors(verts, faces, "uniform")[0].norm()) > 1e-2


def test_sdf_sign_regularizer_hand_computed():
    sdf = torch.tensor([-1.0, 2.0, 3.0])
    edges = torch.tensor([[0, 1], [1, 2]])
    # only edge (0, 1) crosses: BCE(σ(−1), 1) + BCE(σ(2), 0) = softplus(1) + softplus(2)
    expected = math.log1p(math.e) + math.log1p(math.e ** 2)
    assert float(sdf_sign_regularizer(sdf, edges)) == pytest.approx(expected, rel=1e-6)
    assert tet_edges(torch.tensor([[0, 1, 2, 3]])).shape == (6, 2)


def test_dmtet_init_from_a_density_field():
    class Ball:  # a density field: 1 inside radius 0.35, 0 outside, red
        def query_density(self, p):
            return (p.norm(dim=-1) < 0.35).float()

        def query_color(self, p):
            return torch.tensor([0.9, 0.1, 0.1]).expand(len(p), 3)

    cfg = OmegaConf.structured(DMTetConfig(tet_grid="", tet_resolution=16))
    model = DMTetModel(cfg)
    color_fn = model._init_geometry_from(Ball(), OmegaConf.create({"export": {"mesh_threshold": 0.5}}))
    v, f = model.surface()
    radius = v.detach().norm(dim=-1)
    assert abs(float(radius.mean()) - 0.35) < model.cell
    model.fit_material(v.detach(), f, color_fn, 60)
    assert float((model.query_color(v.detach()) - torch.tensor([0.9, 0.1, 0.1])).abs().mean()) < 0.1


def test_random_shading_modes_render_and_train_the_material():
    cfg = OmegaConf.structured(MeshConfig(init_subdivisions=2))
    cfg.material.mode_probs = [0.0, 0.5, 0.5]
    model = MeshModel(cfg).train()
    cams = orbit_cameras(2, 16, 16, elevation=20.0, distance=2.5, fovy=40.0)
    modes = set()
    for _ in range(6):
        out = model.render(cams, background=torch.ones(2, 3))
        modes.add(out.extras["shading"])
    assert modes == {"textureless", "shaded"}
    out = model.render(cams, background=torch.ones(2, 3), mode="shaded")
    out.rgb.mean().backward()
    assert float(model.field.net[-1].weight.grad[3:5].abs().sum()) > 0  # roughness / metallic get gradients
    assert out.normal is not None and float(out.normal.detach().norm(dim=-1).max()) == pytest.approx(1.0, abs=1e-4)
    model.eval()
    with torch.no_grad():
        assert model.render(cams).extras["shading"] == "albedo"  # evaluation renders use albedo


# ------------------------------------------------------------------------------------------------------------------
# end to end with the oracle prior


@pytest.fixture(scope="module")
def mesh_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("mesh")
    code = main(["fit", "--config", "mesh_oracle.yaml", f"output_dir={out}", "trainer.max_steps=40",
                 "trainer.checkpoint_every=20", "trainer.val_every=40", "representation.init_subdivisions=3",
                 "representation.ssaa=1", "representation.lr_encoding=0.03", "representation.lr_network=0.01",
                 "guidance.max_step_percent=0.98", *FAST])
    assert code == 0
    (run,) = run_folders(out)
    return run


def test_short_mesh_fit_improves_psnr(mesh_run):
    from dreamkit.callbacks import psnr_db
    from dreamkit.run import held_out_renders
    from dreamkit.system import build_representation

    cfg, model, cams, images, targets = held_out_renders(mesh_run)
    assert isinstance(model, MeshModel) and model.num_faces == 1280
    initial = build_representation(cfg, torch.Generator().manual_seed(int(cfg.seed))).eval()
    with torch.no_grad():
        psnr0 = psnr_db(initial.render(cams, background=torch.ones(len(cams), 3)).rgb.clamp(0, 1), targets)
    assert psnr_db(images, targets) > psnr0 + 1.0


def test_init_from_a_finished_run_and_clear_errors(mesh_run, tmp_path):
    cfg = OmegaConf.structured(MeshConfig(init_color_steps=20, init_color_points=2048))
    model = MeshModel(cfg)
    info = model.initialize_from_run(mesh_run, log=lambda _: None)
    assert info["faces"] == 1280 and model.num_faces == 1280  # the source's own mesh (its export_mesh)
    # a checkpoint of another mesh size reloads through resize_to (what Lightning's resume and export do)
    state = load_checkpoint(mesh_run / "ckpts" / "last.ckpt")["state_dict"]
    state = {k[len("representation."):]: v for k, v in state.items() if k.startswith("representation.")}
    fresh = MeshModel(OmegaConf.structured(MeshConfig(init_subdivisions=2)))
    fresh.resize_to({k[len("params."):]: v.shape for k, v in state.items() if k.startswith("params.")})
    fresh.load_state_dict(state)
    assert fresh.num_faces == 1280 and fresh.params["faces"].dtype == torch.long
    # errors: not a folder, not a run, unfinished run — one line each, ConfigError
    for bad, words in ((tmp_path / "missing", "not found"), (tmp_path, "not a dreamkit run")):
        with pytest.raises(ConfigError, match=words) as err:
            model.initialize_from_run(bad)
        assert "\n" not in str(err.value)
    unfinished = tmp_path / "unfinished"
    (unfinished / "ckpts").mkdir(parents=True)
    (unfinished / "config.yaml").write_text((mesh_run / "config.yaml").read_text().replace("max_steps: 40",
                                                                                            "max_steps: 400"))
    (unfinished / "ckpts" / "last.ckpt").write_bytes((mesh_run / "ckpts" / "last.ckpt").read_bytes())
    with pytest.raises(ConfigError, match="stopped at step 40 of 400"):
        model.initialize_from_run(unfinished)
    # through the CLI: exit code 2 and no run folder for a bad source
    out = tmp_path / "runs"
    assert main(["fit", "--config", "mesh_oracle.yaml", f"output_dir={out}", f"init_from={tmp_path / 'missing'}",
                 *FAST]) == 2
    assert not out.exists()
    assert main(["fit", "--config", "gs_oracle.yaml", f"output_dir={out}", f"init_from={mesh_run}", *FAST]) == 2


def test_mesh_representation_exports_a_valid_glb_with_baked_material(mesh_run, tmp_path):
    from dreamkit.export.bake import bake_texture
    from dreamkit.export.gltf import export_glb
    from dreamkit.export.mesh import load_mesh_file
    from dreamkit.run import load_run
    from dreamkit.system import load_representation_from_checkpoint
    from test_export_mesh import validate_glb

    _, cfg, ckpt = load_run(mesh_run)
    model = load_representation_from_checkpoint(cfg, ckpt, torch.device("cpu"))
    export_cfg = OmegaConf.merge(cfg.export, {"texture_size": 128, "texture_padding": 2, "mesh_preview": False})
    path = export_glb(model, tmp_path / "mesh.glb", export_cfg=export_cfg)
    report = validate_glb(path)
    assert report["issues"]["numErrors"] == 0, report["issues"]
    mesh = load_mesh_file(path)
    assert len(mesh.faces) == model.num_faces  # the representation's own mesh, no marching cubes
    # the material field bakes into glTF's ORM packing through the same texture baker
    own = model.export_mesh(export_cfg)
    from dreamkit.export.uv import unwrap_uv

    orm, mask = bake_texture(unwrap_uv(own, 128, padding=2), 128, color_fn=model.query_orm, padding=2)
    assert mask.any() and np.allclose(orm[..., 0], 1.0)
    assert 0.0 < float(orm[mask][:, 1].mean()) < 1.0
    # ... and that texture is what the GLB carries (read with pygltflib, not with our exporter's objects)
    import io

    import imageio.v3 as iio
    import pygltflib

    gltf = pygltflib.GLTF2().load(str(path))
    material = gltf.materials[0].pbrMetallicRoughness
    assert material.roughnessFactor == 1.0 and material.metallicFactor == 1.0
    image = gltf.images[gltf.textures[material.metallicRoughnessTexture.index].source]
    view = gltf.bufferViews[image.bufferView]
    png = gltf.binary_blob()[view.byteOffset: view.byteOffset + view.byteLength]
    stored = iio.imread(io.BytesIO(png)).astype(np.float32)[..., :3] / 255.0
    assert np.abs(stored[mask] - orm[mask]).mean() < 2.0 / 255
