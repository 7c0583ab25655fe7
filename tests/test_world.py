"""The tiny world: shapes, colours, asymmetric objects, compositions, captions and the dataset renderer."""
from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch

from dreamkit.cameras import cameras_from_spherical
from dreamkit.config import CameraConfig
from dreamkit.render.raster import rasterize_mesh, render_mesh_colors
from dreamkit.world import (
    ASYMMETRIC_OBJECTS,
    COLOURS,
    MAX_RADIUS,
    SHAPE_NAMES,
    all_single_scenes,
    asymmetric_scene,
    asymmetric_scenes,
    composition_scene,
    composition_scenes,
    nearest_prompts,
    parse_prompt,
    scene_from_key,
    single_scene,
)
from dreamkit.world.dataset import (
    build_dataset,
    load_shard,
    render_scene_views,
    sample_multiview_cameras,
    sample_training_cameras,
)
from dreamkit.world.shapes import shape_mesh


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """These tensors are small: one intra-op thread is faster, and much faster on a loaded 2-core machine."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def cams_at(elevations, azimuths, res=48, distance=2.75, fovy=40.0):
    n = len(elevations)
    return cameras_from_spherical(torch.tensor(elevations, dtype=torch.float32),
                                  torch.tensor(azimuths, dtype=torch.float32),
                                  torch.full((n,), distance), torch.full((n,), fovy), res, res)


def test_shapes_are_closed_outward_and_fit_the_radius():
    trimesh = pytest.importorskip("trimesh")
    assert len(SHAPE_NAMES) >= 8
    for name in SHAPE_NAMES:
        v, f = shape_mesh(name)
        mesh = trimesh.Trimesh(v, f, process=False)
        assert mesh.is_watertight and mesh.is_winding_consistent, name
        assert mesh.volume > 0, f"{name} is wound inwards"
        assert np.linalg.norm(v, axis=1).max() <= MAX_RADIUS + 1e-9, name
        assert np.linalg.norm(v.min(0) + v.max(0)) < 1e-9, f"{name} bounding box is not centred"


def test_shapes_have_distinct_silhouettes():
    cams = cams_at([15.0, 50.0, 0.0], [30.0, 135.0, 90.0])
    masks = {s: render_scene_views(single_scene(s, "red"), cams)[1][..., 0] > 0.5 for s in SHAPE_NAMES}
    for a, b in itertools.combinations(SHAPE_NAMES, 2):
        iou = ((masks[a] & masks[b]).sum() / (masks[a] | masks[b]).sum()).item()
        assert iou < 0.9, f"{a} and {b} look alike (silhouette IoU {iou:.2f})"


def test_colours_have_distinct_hues():
    assert len(COLOURS) >= 8
    for a, b in itertools.combinations(COLOURS.values(), 2):
        d = abs(a.hue - b.hue)
        assert min(d, 360 - d) >= 20, f"{a.name} and {b.name} hues too close"
    for c in COLOURS.values():
        r, g, bl = c.rgb01
        assert (max(r, g, bl) - min(r, g, bl)) / max(r, g, bl) > 0.5, f"{c.name} is not saturated"


@pytest.mark.parametrize("name", list(ASYMMETRIC_OBJECTS))
def test_asymmetric_front_feature_faces_plus_z(name):
    scene = asymmetric_scene(name)
    verts, faces, colours = scene.mesh()
    assert len(torch.unique(colours, dim=0)) >= 3, "an asymmetric object has several colours"
    assert verts.norm(dim=1).max() <= MAX_RADIUS + 1e-5
    feature = (colours * 255).round() == torch.tensor(ASYMMETRIC_OBJECTS[name].front_feature, dtype=torch.float32)
    feature_faces = feature.all(1)
    assert feature_faces.any()
    cams = cams_at([10.0, 10.0], [0.0, 180.0], res=64)
    frags = rasterize_mesh(verts, faces, cams.viewmats, cams.K, 64, 64)
    fid = frags.face_id
    seen = (feature_faces[fid.clamp(min=0)] & (fid >= 0)).flatten(1).sum(1)
    assert seen[0] >= 6, f"{name}: front feature not visible from the front ({seen[0]} px)"
    assert seen[1] == 0, f"{name}: front feature visible from the back ({seen[1]} px)"


def test_compositions_place_objects_by_relation():
    on = composition_scene("cube", "red", "on_top_of", "sphere", "blue")
    a, b = on.parts()
    assert a.rgb == COLOURS["red"].rgb and b.rgb == COLOURS["blue"].rgb
    assert a.vertices.mean(0)[1] > b.vertices.mean(0)[1] + 0.2
    assert a.vertices.min(0)[1] >= b.vertices.max(0)[1] - 1e-9  # resting on top, not inside
    assert abs(a.vertices.mean(0)[0] - b.vertices.mean(0)[0]) < 1e-6
    nxt = composition_scene("cone", "green", "next_to", "torus", "yellow")
    a, b = nxt.parts()
    assert a.vertices.max(0)[0] < b.vertices.min(0)[0]  # A left of B (at -X), not overlapping
    assert abs(a.vertices.min(0)[1] - b.vertices.min(0)[1]) < 1e-9  # standing on the same ground
    for scene in composition_scenes(20, seed=1) + [on, nxt]:
        v, _, _ = scene.mesh()
        assert v.norm(dim=1).max() <= MAX_RADIUS + 1e-5
        assert scene_from_key(scene.key) == scene


def test_parse_prompt_round_trips_every_caption():
    scenes = all_single_scenes() + asymmetric_scenes() + composition_scenes(400, seed=0)
    assert len(all_single_scenes()) == 64 and len(asymmetric_scenes()) >= 3
    for scene in scenes:
        assert len(scene.captions) >= 4 and scene.captions[0] == scene.caption
        for caption in scene.captions:
            assert parse_prompt(caption) == scene, caption
        assert parse_prompt("  " + scene.caption.upper().replace(" ", "   ") + ", back view.") == scene
    assert parse_prompt("a red dragon") is None
    assert parse_prompt("a red cube on a red cube") is None
    assert parse_prompt("") is None
    assert parse_prompt("a blue ball on a green box") == composition_scene("sphere", "blue", "on_top_of", "cube",
                                                                           "green")


def test_nearest_prompts_returns_in_world_captions():
    near = nearest_prompts("a red dragon", k=3)
    assert len(near) == 3
    for caption in near:
        assert parse_prompt(caption) is not None
        assert "red" in caption
    assert nearest_prompts("a house on a hill", k=1) == ["a house"]
    # restricted to what a prior knows: only those captions, still ranked (red before blue for "a red dragon")
    assert nearest_prompts("a red dragon", k=3, among={"a blue cube", "a red cube", "not a caption"}) == \
        ["a red cube", "a blue cube"]
    assert nearest_prompts("a red dragon", among=set()) == []


def test_culled_renderer_matches_two_sided_reference():
    cams = cams_at([20.0, -10.0, 45.0], [10.0, 100.0, -150.0], res=32)
    for scene in all_single_scenes()[::8] + asymmetric_scenes() + composition_scenes(4, seed=3):
        rgb, alpha, _ = render_scene_views(scene, cams, background=(0.9, 0.9, 0.9))
        v, f, c = scene.mesh()
        ref_rgb, ref_alpha, _ = render_mesh_colors(v, f, cams, face_colors=c, background=(0.9, 0.9, 0.9))
        assert torch.equal(alpha, ref_alpha), scene.key
        assert torch.allclose(rgb, ref_rgb, atol=1e-5), scene.key


def test_render_scene_views_shapes_and_random_lights():
    cams = cams_at([10.0, 30.0], [0.0, 90.0], res=32)
    scene = single_scene("sphere", "green")
    rgb, alpha, lights = render_scene_views(scene, cams, generator=torch.Generator().manual_seed(0))
    assert rgb.shape == (2, 32, 32, 3) and alpha.shape == (2, 32, 32, 1) and rgb.dtype == torch.float32
    assert 0 <= rgb.min() and rgb.max() <= 1
    assert torch.allclose(rgb[0, 0, 0], torch.tensor([0.9, 0.9, 0.9]))
    again, _, _ = render_scene_views(scene, cams, generator=torch.Generator().manual_seed(0))
    other, _, _ = render_scene_views(scene, cams, generator=torch.Generator().manual_seed(1))
    assert torch.equal(rgb, again) and not torch.equal(rgb, other)
    assert lights["direction"].shape == (2, 3) and (lights["direction"][:, 1] > 0).all()
    aa, alpha_aa, _ = render_scene_views(scene, cams, ssaa=2)
    assert aa.shape == rgb.shape and ((alpha_aa > 0) & (alpha_aa < 1)).any()  # antialiased edges


def test_training_cameras_follow_the_fit_distribution():
    cfg = CameraConfig()
    cams = sample_training_cameras(256, torch.Generator().manual_seed(0))
    assert cams.width == cams.height == 64
    for values, (lo, hi) in ((cams.elevation, cfg.elevation_range), (cams.azimuth, cfg.azimuth_range),
                             (cams.distance, cfg.distance_range), (cams.fovy, cfg.fovy_range)):
        assert lo - 1e-4 <= values.min() and values.max() <= hi + 1e-4


def test_multiview_cameras_are_90_degrees_apart():
    cams = sample_multiview_cameras(5, torch.Generator().manual_seed(0))
    az = cams.azimuth.view(5, 4)
    step = torch.remainder(az[:, 1:] - az[:, :-1], 360.0)
    assert torch.allclose(step, torch.full_like(step, 90.0), atol=1e-3)
    for t in (cams.elevation, cams.distance, cams.fovy):
        t = t.view(5, 4)
        assert torch.equal(t, t[:, :1].expand_as(t))


@pytest.mark.parametrize("multiview", [False, True])
def test_build_dataset_is_deterministic(tmp_path, multiview):
    kw = dict(n_images=48, resolution=32, multiview=multiview, shard_size=32, n_compositions=16)
    meta = build_dataset(tmp_path / "a", seed=3, **kw)
    build_dataset(tmp_path / "b", seed=3, **kw)
    build_dataset(tmp_path / "c", seed=4, **kw)
    on_disk = json.loads((tmp_path / "a" / "captions.json").read_text())
    assert on_disk["n_images"] == meta["n_images"] == 48 and len(on_disk["shards"]) == 2
    assert on_disk["captions"] == meta["captions"]
    first = load_shard(tmp_path / "a" / "shard_00000.pt")
    same = load_shard(tmp_path / "b" / "shard_00000.pt")
    other = load_shard(tmp_path / "c" / "shard_00000.pt")
    for key in first:
        assert torch.equal(first[key], same[key]), key
    assert not torch.equal(first["images"], other["images"])
    images = first["images"]
    assert images.dtype == torch.uint8
    if multiview:
        assert images.shape == (8, 4, 32, 32, 3) and first["azimuth"].shape == (8, 4)
        step = torch.remainder(first["azimuth"][:, 1:] - first["azimuth"][:, :-1], 360.0)
        assert torch.allclose(step, torch.full_like(step, 90.0), atol=1e-3)
        assert first["c2w"].shape == (8, 4, 4, 4) and first["scene"].shape == (8,)
    else:
        assert images.shape == (32, 32, 32, 3) and first["c2w"].shape == (32, 4, 4)
    for s, c in zip(first["scene"].tolist(), first["caption"].tolist()):
        assert on_disk["caption_scene"][c] == s  # each image's caption describes its scene
        assert parse_prompt(on_disk["captions"][c]) == scene_from_key(on_disk["scenes"][s]["key"])


def test_export_round_trips_through_the_mesh_loader(tmp_path):
    pytest.importorskip("trimesh")
    from dreamkit.world.meshes import load_colored_mesh

    for scene in (asymmetric_scene("snowman"), composition_scene("ring", "pink", "next_to", "cone", "cyan")):
        v, f, c = scene.mesh()
        for suffix in (".ply", ".glb"):
            path = scene.export(tmp_path / f"scene{suffix}")
            v2, f2, c2 = load_colored_mesh(path)
            assert torch.allclose(v2[f2], v[f], atol=1e-5), suffix
            assert torch.allclose(c2, c, atol=1 / 255), suffix


def test_make_world_dataset_script(tmp_path, capsys, load_script):
    module = load_script("make_world_dataset")
    assert module.main([str(tmp_path), "--n-images", "8", "--resolution", "16", "--n-compositions", "4"]) == 0
    assert "img/s" in capsys.readouterr().out
    assert load_shard(tmp_path / "shard_00000.pt")["images"].shape == (8, 16, 16, 3)
    assert module.main([str(tmp_path), "--n-images", "0"]) == 2
