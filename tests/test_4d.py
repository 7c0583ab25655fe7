"""4D: motions of the tiny world, clip sampling, the 4D oracle, video SDS and motion amplification, deformable
Gaussians, and the animated exports (GLB morph targets read back by pygltflib and checked by the Khronos validator,
played by <model-viewer> in Chromium; the PLY sequence read by plyfile); a short 4D fit resumes exactly."""
from __future__ import annotations

import io
import math
import struct
from typing import Optional

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from dreamkit.batch import Batch, Layout
from dreamkit.cameras import CameraSampler, orbit_cameras
from dreamkit.errors import ConfigError, DreamkitError
from dreamkit.assets import asset_roots
from dreamkit.export.mesh import Mesh
from dreamkit.guidance.base import amplify_motion
from dreamkit.priors.oracle import OraclePrior
from dreamkit.render.raster import render_mesh_colors
from dreamkit.representations.deformable import (DeformableGaussianConfig, DeformableGaussianModel,
                                                 symmetric_kl_diag)
from dreamkit.representations.gaussians import GaussianModel
from dreamkit.world.meshes import load_colored_mesh
from dreamkit.world.motion import MOTIONS, Motion, motion_named, split_motion_caption, transform_points


# ------------------------------------------------------------------------------------------------------------------
# motions

def test_motions_by_hand():
    tau = torch.tensor([0.0, 0.5, 1.0])
    right = Motion("moving right").centre(tau)
    assert torch.allclose(right[:, 0], torch.tensor([-0.5, 0.0, 0.5])) and right[:, 1:].abs().max() == 0
    assert torch.allclose(Motion("moving left").centre(tau)[:, 0], torch.tensor([0.5, 0.0, -0.5]))
    assert torch.allclose(Motion("moving up").centre(tau)[:, 1], torch.tensor([-0.5, 0.0, 0.5]))
    assert torch.allclose(Motion("bouncing").centre(tau)[:, 1], torch.tensor([-0.25, 0.25, -0.25]), atol=1e-6)
    yaw = Motion("spinning").yaw_degrees(tau)  # atan2: 180° comes back as ±180°
    assert torch.allclose(yaw[:2], torch.tensor([0.0, 90.0]), atol=1e-4) and abs(abs(float(yaw[2])) - 180) < 1e-4
    assert torch.allclose(Motion("growing").scale(tau), torch.tensor([0.6, 0.9, 1.2]))
    assert torch.allclose(Motion("shrinking").scale(tau), torch.tensor([1.2, 0.9, 0.6]))
    # spinning by 90° takes +X (the camera's right at azimuth 0) to −Z (away from that camera)
    p = transform_points(torch.tensor([[1.0, 0.0, 0.0]]), Motion("spinning"), 0.5)[0, 0]
    assert torch.allclose(p, torch.tensor([0.0, 0.0, -1.0]), atol=1e-6)
    still = transform_points(torch.randn(5, 3), Motion("still"), tau)
    assert torch.equal(still[0], still[2])
    assert split_motion_caption("A red cube bouncing.") == ("a red cube", Motion("bouncing"))
    assert split_motion_caption("a blue torus moving left")[1].name == "moving left"
    assert split_motion_caption("a red cube")[1].name == "still"
    with pytest.raises(DreamkitError, match="bouncing"):
        motion_named("wobbling")
    assert len(MOTIONS) == 9


# ------------------------------------------------------------------------------------------------------------------
# clips

def test_clip_cameras_share_a_camera_and_step_time_by_one_frame():
    sampler = CameraSampler(torch.Generator().manual_seed(0))
    F = 4
    cams = sampler.sample(12, 16, 16, (0, 30), (-180, 180), (2.5, 3), (40, 40), time_range=(0.0, 1.0), frames=F)
    times = cams.time.view(-1, F)
    assert ((times[:, 0] >= 0) & (times[:, 0] < 1 / F)).all()
    assert torch.allclose(times - times[:, :1], torch.arange(F).float() / F)
    c2w = cams.c2w.view(-1, F, 4, 4)
    assert torch.equal(c2w, c2w[:, :1].expand_as(c2w))  # one still camera per clip
    moving = CameraSampler(torch.Generator().manual_seed(0)).sample(
        12, 16, 16, (0, 30), (-180, 180), (2.5, 3), (40, 40), time_range=(0.0, 1.0), frames=F, azimuth_step=5.0)
    az = torch.remainder(moving.azimuth.view(-1, F) - moving.azimuth.view(-1, F)[:, :1] + 180, 360) - 180
    assert torch.allclose(az, torch.arange(F).float() * 5, atol=1e-3)
    with pytest.raises(ValueError, match="multiple"):
        sampler.sample(6, 16, 16, (0, 30), (-180, 180), (2.5, 3), (40, 40), frames=4)


def test_static_sampling_is_unchanged_by_the_clip_code():
    """frames=1 and time_range [0, 0] draw exactly what the sampler drew before 4D (the same stream)."""
    a = CameraSampler(torch.Generator().manual_seed(3)).sample(8, 16, 16, (0, 30), (-180, 180), (2.5, 3), (35, 45))
    b = CameraSampler(torch.Generator().manual_seed(3)).sample(8, 16, 16, (0, 30), (-180, 180), (2.5, 3), (35, 45),
                                                              frames=1)
    assert torch.equal(a.c2w, b.c2w) and torch.equal(a.time, torch.zeros(8))


# ------------------------------------------------------------------------------------------------------------------
# the 4D oracle

def _oracle(motion="bouncing", frames=1, targets=None):
    targets = targets or [{"mesh": "meshes/house.ply", "label": "a house", "motion": motion}]
    return OraclePrior(targets=targets, resolution=24, frames=frames, ssaa=1)


def test_oracle_target_moves_with_the_cameras_time():
    prior = _oracle("moving right")
    cams = orbit_cameras(2, 24, 24, elevation=10, distance=2.75, fovy=40)
    cams.time = torch.tensor([0.2, 0.9])
    got = prior.target_images(cams)
    verts, faces, colors = load_colored_mesh("meshes/house.ply")
    for i, tau in enumerate([0.2, 0.9]):
        moved = transform_points(verts, Motion("moving right"), tau)[0]
        rgb, _, _ = render_mesh_colors(moved, faces, cams[i:i + 1], face_colors=colors, background=prior.background,
                                       ssaa=1, **prior.shading)
        assert torch.equal(got[i], rgb[0].permute(2, 0, 1))
    still = _oracle("still").target_images(cams)
    assert torch.equal(still[0], _oracle("still").target_images(cams[0:1])[0])
    assert (got - still).abs().max() > 0.2


def test_clip_oracle_posterior_is_the_clips():
    """Two targets (one still, one moving): with frames=F the posterior weights over targets come from the squared
    distances summed over each clip's frames (worked here by hand), shared by the clip's frames."""
    targets = [{"mesh": "meshes/house.ply", "label": "a house", "motion": "still"},
               {"mesh": "meshes/house.ply", "label": "a house moving", "motion": "moving right"}]
    F = 3
    prior = _oracle(frames=F, targets=targets)
    cams = orbit_cameras(F, 24, 24, elevation=10, distance=2.75, fovy=40)
    cams.c2w = cams.c2w[:1].expand(F, 4, 4).clone()
    cams.time = torch.tensor([0.1, 0.4, 0.7])
    gen = torch.Generator().manual_seed(0)
    x_t = torch.randn(F, 3, 24, 24, generator=gen)
    t = torch.full((F,), 600)
    cond = prior.encode_text(["a house"] * F).uncond  # both targets, equal weights
    x0 = prior.predict_x0(x_t, t, cond, cams)
    renders = prior.render_targets(cams)  # [F, 2, 3, r, r]
    abar = prior.alphas_cumprod[600].double()
    d = (x_t[:, None].double() - abar.sqrt() * renders.double()).flatten(2).square().sum(-1).sum(0)  # [2]
    w = torch.softmax(-d / (2 * (1 - abar)), 0)
    expected = torch.einsum("k,fkchw->fchw", w, renders.double()).float()
    assert torch.allclose(x0, expected, atol=1e-5)
    per_frame = _oracle(frames=1, targets=targets).predict_x0(x_t, t, cond, cams)
    assert not torch.allclose(per_frame, expected, atol=1e-3)  # the clip's posterior is not each frame's
    with pytest.raises(DreamkitError, match="one timestep"):
        prior.predict_x0(x_t, torch.tensor([600, 600, 500]), cond, cams)


# ------------------------------------------------------------------------------------------------------------------
# video SDS

def _distill(frames, amp, prior_frames, seed=0):
    from dreamkit.guidance.sds import SDSConfig, SDSGuidance

    prior = _oracle("bouncing", frames=prior_frames)
    cfg = OmegaConf.structured(SDSConfig(guidance_scale=1.0, motion_amp=amp))
    guidance = SDSGuidance(cfg, prior, 100)
    cams = CameraSampler(torch.Generator().manual_seed(1)).sample(
        8, 24, 24, (0, 30), (-180, 180), (2.5, 3), (40, 40), time_range=(0.0, 1.0), frames=frames)
    images = torch.rand(8, 3, 24, 24, generator=torch.Generator().manual_seed(2), requires_grad=True)
    text = prior.encode_text(["a house"])
    batch = Batch(cams, text.__class__(text.cond.expand(8, -1), text.uncond.expand(8, -1), ["a house"] * 8),
                  Layout(frames=frames))
    out = guidance.distill(images, batch, 10, torch.Generator().manual_seed(seed))
    out["loss_sds"].backward()
    return out, images.grad


def test_video_sds_with_one_frame_is_image_sds_bitwise():
    image_out, image_grad = _distill(frames=1, amp=1.0, prior_frames=1)
    video_out, video_grad = _distill(frames=1, amp=30.0, prior_frames=1)  # amplification has nothing to amplify
    assert torch.equal(image_grad, video_grad) and torch.equal(image_out["loss_sds"], video_out["loss_sds"])


def test_timestep_is_constant_within_a_clip():
    from dreamkit.guidance.sds import SDSConfig, SDSGuidance

    guidance = SDSGuidance(OmegaConf.structured(SDSConfig()), _oracle(frames=4), 100)
    t = guidance.sample_timesteps(32, 5, torch.Generator().manual_seed(0), torch.device("cpu"), Layout(frames=4))
    clips = t.view(-1, 4)
    assert (clips == clips[:, :1]).all() and len(torch.unique(clips[:, 0])) > 1


def test_motion_amplification_keeps_the_mean_and_scales_deviations():
    r = torch.randn(12, 3, 5, 5, generator=torch.Generator().manual_seed(0))
    for amp in (1.0, 30.0, 0.0):
        out = amplify_motion(r, 4, amp)
        clips, got = r.view(3, 4, 3, 5, 5), out.view(3, 4, 3, 5, 5)
        assert torch.allclose(got.mean(1), clips.mean(1), atol=1e-5)
        assert torch.allclose(got - got.mean(1, keepdim=True), amp * (clips - clips.mean(1, keepdim=True)),
                              atol=1e-4)
    assert torch.equal(amplify_motion(r, 4, 1.0), r) or torch.allclose(amplify_motion(r, 4, 1.0), r, atol=1e-6)
    # through the loss: the gradient's frame mean is kept and its deviations scale by ω (one weight per clip)
    _, g1 = _distill(frames=4, amp=1.0, prior_frames=4)
    _, g5 = _distill(frames=4, amp=5.0, prior_frames=4)
    c1, c5 = g1.view(2, 4, -1), g5.view(2, 4, -1)
    assert torch.allclose(c5.mean(1), c1.mean(1), atol=1e-6)
    assert torch.allclose(c5 - c5.mean(1, keepdim=True), 5 * (c1 - c1.mean(1, keepdim=True)), atol=1e-5)


# ------------------------------------------------------------------------------------------------------------------
# deformable Gaussians

def _deformable(**kw) -> DeformableGaussianModel:
    cfg = OmegaConf.structured(DeformableGaussianConfig(num_points=400, init_opacity=0.5, init_radius=0.5,
                                                        deform_resolution=8, deform_time_resolution=6, **kw))
    return DeformableGaussianModel(cfg, torch.Generator().manual_seed(0))


def _moving(model: DeformableGaussianModel) -> DeformableGaussianModel:
    """Give the field a motion: time planes that vary along τ and random heads."""
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for plane in model.deformation.planes:
            plane.add_(0.3 * torch.randn(plane.shape, generator=gen))
        for head in model.deformation.heads.values():
            head.weight.copy_(0.2 * torch.randn(head.weight.shape, generator=gen))
    return model


def test_deformation_is_the_identity_at_init():
    model = _deformable()
    moved = model.deformed(torch.tensor([0.0, 0.3, 1.0]))
    for i in range(3):
        assert torch.equal(moved["means"][i], model.means)
        assert torch.equal(moved["quats"][i], model.quats)
    cams = orbit_cameras(3, 32, 32, elevation=15, distance=2.75, fovy=40)
    static = cams[0:3]
    cams.time = torch.tensor([0.9, 0.2, 0.9])
    bg = torch.ones(3, 3)
    ref = GaussianModel.render(model, static, background=bg).rgb
    assert (model.render(cams, background=bg).rgb - ref).abs().max() < 1e-5


def test_deformed_render_matches_each_time_alone_and_gathers_gradients_in_camera_order():
    model = _moving(_deformable())
    cams = orbit_cameras(4, 32, 32, elevation=15, distance=2.75, fovy=40)
    cams.time = torch.tensor([0.7, 0.1, 0.7, 0.4])
    bg = torch.ones(4, 3)
    out = model.render(cams, background=bg)
    weights = torch.rand(out.rgb.shape, generator=torch.Generator().manual_seed(1))
    (out.rgb * weights).sum().backward()
    grads = out.extras["means2d"].grad
    assert grads.shape == (4, model.num_gaussians, 2)
    assert (out.rgb[0] - out.rgb[2]).abs().max() > 0.01  # same time, other camera
    for i in range(4):
        model.zero_grad()
        one = model.render(cams[i:i + 1], background=bg[i:i + 1])
        assert torch.allclose(one.rgb[0], out.rgb[i], atol=1e-5)
        (one.rgb * weights[i:i + 1]).sum().backward()
        assert torch.allclose(one.extras["means2d"].grad[0], grads[i], atol=1e-5)
    assert (out.rgb[1] - model.render(cams[1:2].__class__.cat([cams[1:2]]), background=bg[1:2]).rgb[0]).abs().max() \
        < 1e-5


def test_translation_drawn_in_each_cameras_frame_or_removed():
    """render(translation="viewer") of a field that only translates (d(τ) for every Gaussian) is the plain render of
    the translation turned by each camera's azimuth (R_a·d), at azimuth 0 the plain render bitwise;
    translation="removed" is the canonical scene's render."""
    from dreamkit.cameras import azimuth_rotation

    def translating(turn_by: Optional[float] = None) -> DeformableGaussianModel:
        model = _deformable()

        def deltas(x, tau):
            d = torch.stack([0.8 * tau - 0.4, 0.3 * tau, 0.2 - 0.2 * tau], dim=-1)  # [T, 3]
            if turn_by is not None:
                d = d @ azimuth_rotation(torch.tensor([turn_by]))[0].T
            return {"position": d[:, None, :].expand(-1, x.shape[0], -1)}

        model.deltas = deltas
        return model

    cams = orbit_cameras(4, 24, 24, elevation=15, distance=2.75, fovy=40, start_azimuth=0)  # 0, 90, 180, 270
    cams.time = torch.tensor([0.3, 0.3, 0.9, 1.0])
    bg = torch.ones(4, 3)
    model = translating()
    out = model.render(cams, background=bg, translation="viewer")
    plain = model.render(cams, background=bg)
    # the front camera sees the world's frame: bitwise its plain render alone ("viewer" splits each time's cameras by
    # azimuth, and a batch of one can differ from a batch of two in the last bit on some CPUs)
    assert torch.equal(out.rgb[0], model.render(cams[0:1], background=bg[:1]).rgb[0])
    assert torch.allclose(out.rgb[0], plain.rgb[0], atol=1e-6)
    for i in range(1, 4):
        assert (out.rgb[i] - plain.rgb[i]).abs().max() > 0.05  # the translation is seen turned
        turned = translating(float(cams.azimuth[i])).render(cams[i:i + 1], background=bg[i:i + 1])
        assert torch.allclose(out.rgb[i], turned.rgb[0], atol=1e-4), i
    out.rgb.sum().backward()  # the shift is differentiable (through the means)
    assert out.extras["means"].shape[0] == 4
    held = model.render(cams, background=bg, translation="removed")
    canonical = _deformable().render(cams.__class__.cat([cams]), background=bg)  # deltas zero: τ_c everywhere
    assert torch.allclose(held.rgb, canonical.rgb, atol=1e-4)
    with pytest.raises(ConfigError, match="translation='up'"):
        model.render(cams, background=bg, translation="up")


def test_a_step_moves_the_field_and_its_regularizers_behave():
    model = _deformable()
    opt = torch.optim.Adam([p for g in model.parameter_groups() for p in g["params"]], lr=1e-2)
    cams = orbit_cameras(2, 24, 24, elevation=15, distance=2.75, fovy=40)
    cams.time = torch.tensor([0.5, 0.8])
    for _ in range(3):
        out = model.render(cams, background=torch.ones(2, 3))
        loss = (out.rgb - torch.tensor([1.0, 0.0, 0.0])).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    d = model.displacement(model.means.detach(), torch.tensor([0.0, 0.5]))
    assert d[0].abs().max() == 0 and d[1].abs().max() > 0  # τ = 0 is the canonical scene, always
    terms = model.regularizers(model.render(cams, background=torch.ones(2, 3)), 0)
    assert {"loss_deform_tv", "loss_deform_smooth", "loss_motion_kl"} <= set(terms)
    assert all(torch.isfinite(v) for v in terms.values())


def test_symmetric_kl_by_hand():
    mu, var = torch.tensor([0.1, 0.2, 0.3]), torch.tensor([0.5, 1.0, 2.0])
    assert symmetric_kl_diag(mu, var, mu, var) == 0
    shift = torch.tensor([0.3, 0.0, 0.0])
    expected = 0.5 * (0.3 ** 2) * (2 / 0.5)
    assert math.isclose(float(symmetric_kl_diag(mu + shift, var, mu, var)), expected, rel_tol=1e-6)
    # a cloud that a 90° turn about y maps to itself (an isotropic spread in x, z): zero; translated: positive
    pts = torch.tensor([[x, y, z] for x in (-1.0, 1.0) for y in (-0.5, 0.5) for z in (-1.0, 1.0)])
    turned = transform_points(pts, Motion("spinning"), 0.5)[0]
    kl = symmetric_kl_diag(turned.mean(0), turned.var(0), pts.mean(0), pts.var(0))
    assert float(kl) < 1e-10
    assert float(symmetric_kl_diag((pts + shift).mean(0), pts.var(0), pts.mean(0), pts.var(0))) > 0.01


# ------------------------------------------------------------------------------------------------------------------
# animated exports

def _glb_json_and_bin(path):
    data = path.read_bytes()
    (json_len,) = struct.unpack("<I", data[12:16])
    import json

    doc = json.loads(data[20:20 + json_len])
    off = 20 + json_len
    (bin_len,) = struct.unpack("<I", data[off:off + 4])
    return doc, data[off + 8:off + 8 + bin_len]


def test_canonical_time_is_where_the_field_is_the_identity(tmp_path):
    """representation.canonical_time=τ_c: the same field, anchored at τ_c instead of 0 (displacement(τ) is the
    default model's displacement(τ) − displacement(τ_c)); the exports' mesh is the scene at τ_c and the GLB's morph
    targets still reach the scene at every keyframe; a time outside [0, 1] is a config error."""
    from dreamkit.export.gltf import animation_morph

    base = _moving(_deformable())
    mid = _moving(_deformable(canonical_time=0.5))
    assert mid.canonical_time == 0.5 and base.canonical_time == 0.0
    taus = torch.tensor([0.0, 0.25, 0.5, 1.0])
    with torch.no_grad():
        d_base, d_mid = base.displacement(base.means, taus), mid.displacement(mid.means, taus)
        assert d_mid[2].abs().max() == 0 and d_mid[0].abs().max() > 0.01
        assert torch.allclose(d_mid, d_base - d_base[2:3], atol=1e-6)
        # the scene at each time: canonical + displacement, the same for any τ_c once the canonical is placed at τ_c
        at_mid = mid.at_time(0.5)
        assert torch.equal(at_mid.means, mid.means)
        verts = mid.means[:30].numpy()
        mesh = Mesh(verts, np.arange(30).reshape(10, 3), vertex_colors=np.full((30, 3), 0.5, np.float32))
        _, disp = animation_morph(mid, mesh, OmegaConf.create({"animation_keyframes": 5}))
        assert np.abs(disp[2]).max() == 0 and np.allclose(verts + disp[0], mid.at_time(0.0).means[:30].numpy(),
                                                         atol=1e-6)
    with pytest.raises(ConfigError, match="canonical_time=1.5"):
        _deformable(canonical_time=1.5)


def test_animated_glb_reads_back_with_the_fields_motion(tmp_path):
    """The morph targets and the animation, read back by pygltflib (a reader we did not write), hold the
    deformation field's displacement of the mesh's vertices at each keyframe; the Khronos validator reports no
    error."""
    pygltflib = pytest.importorskip("pygltflib")
    from dreamkit.export.gltf import animation_morph, write_glb
    from test_export_mesh import validate_glb

    model = _moving(_deformable())
    verts = np.random.default_rng(0).uniform(-0.4, 0.4, (30, 3)).astype(np.float32)
    mesh = Mesh(verts, np.arange(30).reshape(10, 3), vertex_colors=np.full((30, 3), 0.5, np.float32))
    export_cfg = OmegaConf.create({"animation_keyframes": 5, "animation_seconds": 3.0})
    path = write_glb(mesh, tmp_path / "anim.glb", morph=animation_morph(model, mesh, export_cfg))
    gltf = pygltflib.GLTF2().load(str(path))
    blob = gltf.binary_blob()

    def read(index):
        acc = gltf.accessors[index]
        view = gltf.bufferViews[acc.bufferView]
        width = {"SCALAR": 1, "VEC3": 3}[acc.type]
        start = view.byteOffset + (acc.byteOffset or 0)
        return np.frombuffer(blob[start:start + acc.count * width * 4], np.float32).reshape(acc.count, width)

    prim = gltf.meshes[0].primitives[0]
    assert len(prim.targets) == 5
    (anim,) = gltf.animations
    sampler = anim.samplers[anim.channels[0].sampler]
    assert anim.channels[0].target.path == "weights" and sampler.interpolation == "LINEAR"
    assert np.allclose(read(sampler.input)[:, 0], np.linspace(0, 3.0, 5))
    assert np.array_equal(read(sampler.output).reshape(5, 5), np.eye(5))
    taus = torch.linspace(0, 1, 5)
    expected = model.displacement(torch.as_tensor(verts), taus).detach().numpy()
    for k, target in enumerate(prim.targets):
        got = read(target["POSITION"])
        assert np.allclose(got, expected[k], atol=1e-6)
    assert np.abs(expected[-1]).max() > 0.01 and np.abs(expected[0]).max() == 0
    report = validate_glb(path)
    assert report["issues"]["numErrors"] == 0, report["issues"]["messages"]
    assert report["info"]["animationCount"] == 1 and report["info"]["hasMorphTargets"]


def test_ply_sequence_holds_the_gaussians_at_each_keyframe(tmp_path):
    from plyfile import PlyData

    from dreamkit.export.ply import export_gaussians_ply

    model = _moving(_deformable())
    cfg = OmegaConf.create({"animation_keyframes": 3})
    path = export_gaussians_ply(model, tmp_path / "gaussians.ply", export_cfg=cfg)
    frames = sorted((tmp_path / "gaussians_frames").glob("frame_*.ply"))
    assert [f.name for f in frames] == ["frame_000.ply", "frame_001.ply", "frame_002.ply"]
    for k, f in enumerate(frames):
        v = PlyData.read(str(f))["vertex"]
        xyz = np.stack([v["x"], v["y"], v["z"]], -1)
        assert np.allclose(xyz, model.at_time(k / 2).means.numpy(), atol=1e-6)
    v = PlyData.read(str(path))["vertex"]
    assert np.allclose(np.stack([v["x"], v["y"], v["z"]], -1), model.means.detach().numpy())
    assert not np.allclose(model.at_time(1.0).means.numpy(), model.means.detach().numpy(), atol=1e-3)


def test_animated_glb_plays_in_model_viewer(tmp_path, chromium):
    """A box moving right by 1 over 2 s, written by our GLB writer, played by <model-viewer> (Google's, in Chromium):
    it lists the animation, and a frame at 1.5 s shows the red box right of where it is at 0 s."""
    from dreamkit.export.gltf import write_glb
    from dreamkit.report.build import ASSETS, MODEL_VIEWER
    import base64
    import shutil

    import trimesh

    box = trimesh.creation.box((0.5, 0.5, 0.5))
    verts = np.asarray(box.vertices, np.float32)
    mesh = Mesh(verts, np.asarray(box.faces), vertex_colors=np.tile([[0.9, 0.1, 0.1]], (len(verts), 1)),
                unlit=True)
    disp = np.zeros((3, len(verts), 3), np.float32)
    disp[1, :, 0], disp[2, :, 0] = 0.5, 1.0
    path = write_glb(mesh, tmp_path / "box.glb", morph=(np.array([0.0, 1.0, 2.0]), disp))
    shutil.copyfile(ASSETS / MODEL_VIEWER, tmp_path / MODEL_VIEWER)
    src = "data:model/gltf-binary;base64," + base64.b64encode(path.read_bytes()).decode()
    (tmp_path / "index.html").write_text(
        f'<!doctype html><script src="{MODEL_VIEWER}"></script><body style="margin:0;background:#fff">'
        f'<model-viewer id="m" src="{src}" autoplay camera-orbit="0deg 90deg 4m" field-of-view="40deg" '
        'style="width:400px;height:300px;background:#fff" interaction-prompt="none"></model-viewer>')
    page = chromium.new_page(viewport={"width": 400, "height": 300})
    page.goto((tmp_path / "index.html").as_uri())
    page.wait_for_function("document.getElementById('m').loaded === true", timeout=30_000)
    assert page.evaluate("document.getElementById('m').availableAnimations") == [f"{mesh.name}_motion"]
    assert abs(page.evaluate("document.getElementById('m').duration") - 2.0) < 1e-6

    def red_centre_x(seconds: float) -> float:
        page.evaluate(f"(() => {{ const m = document.getElementById('m'); m.pause(); m.currentTime = {seconds}; }})()")
        page.wait_for_timeout(400)
        import imageio.v3 as iio

        rgb = iio.imread(io.BytesIO(page.locator("model-viewer").screenshot()))[..., :3].astype(np.int32)
        red = (rgb[..., 0] > 120) & (rgb[..., 0] > rgb[..., 1] + 60)
        assert red.sum() > 100, "no red box in the frame"
        return float(np.nonzero(red)[1].mean())

    x0, x_mid = red_centre_x(0.0), red_centre_x(1.5)
    page.close()
    assert x_mid - x0 > 40, (x0, x_mid)  # 0.75 units right ≈ 70 px at this distance


# ------------------------------------------------------------------------------------------------------------------
# recipes and fits

def test_frames_must_match_a_video_prior():
    from dreamkit.config import load_config
    from dreamkit.priors.configs import build_prior
    from dreamkit.system import DreamSystem

    cfg = load_config("gs4d_oracle.yaml", ["prior.frames=4", "camera.frames=1", "representation.num_points=100"])
    system = DreamSystem(cfg)
    with pytest.raises(ConfigError, match="camera.frames=4"):
        system.attach_prior(build_prior(cfg.prior, torch.device("cpu")))
    cfg = load_config("gs4d_oracle.yaml", ["camera.frames=2", "representation.num_points=100"])
    with pytest.raises(ConfigError, match="camera.frames=1"):
        DreamSystem(cfg).attach_prior(build_prior(cfg.prior, torch.device("cpu")))


def test_gs4d_video_recipe_loads_with_its_members_prompts():
    """gs4d_video.yaml: tiny-t2i-cam (image member, the object alone, at the canonical time) and tiny-video (the
    whole prompt, clips of 8 frames from the front half), the canonical scene at mid-motion, held at the world's
    size."""
    from dreamkit.config import load_config
    from dreamkit.guidance.composed import member_prompt

    cfg = load_config("gs4d_video.yaml", ["prompt=a red cube moving left"])
    members = cfg.guidance.members
    assert member_prompt(members.image.get("prompt"), cfg.prompt) == "a red cube"
    assert member_prompt(members.video.get("prompt"), cfg.prompt) == "a red cube moving left"
    assert members.video.prior.name == "tiny-video" and members.video.camera.frames == 8
    assert list(members.image.camera.time_range) == [0.5, 0.5] and cfg.representation.canonical_time == 0.5
    assert "translation" not in members.image and "translation" not in members.video  # drawn in the world's frame
    # the whole clip time: tiny-video tells a motion's start from its end (time_input harmonics+ramp)
    assert list(members.video.prior.get("time_window", [0.0, 1.0])) == [0.0, 1.0]
    assert cfg.prior.name == "tiny-t2i-cam" and cfg.representation.object_radius == 0.55


@pytest.mark.skipif(not any((r / "priors" / "tiny-video").is_dir() for r in asset_roots()),
                    reason="assets/priors/tiny-video is not shipped in this checkout")
def test_gs4d_video_short_fit_exports_an_animation(tmp_path, capsys, load_script):
    """The text-to-4D recipe with the shipped priors runs end to end (a few steps) and writes an animated GLB."""
    from dreamkit.cli import main

    out = tmp_path / "out"
    args = ["fit", "--config", "gs4d_video.yaml", "prompt=a blue sphere bouncing", "trainer.max_steps=8",
            "trainer.val_every=0", "trainer.progress=false", "representation.num_points=300",
            "camera.time_range=[0, 1]", "export.turntable=false", "export.mesh_preview=false",
            f"output_dir={out}"]
    assert main(args) == 0
    (run,) = [p for p in (out / "gs4d_video").iterdir() if not p.is_symlink()]
    assert (run / "exports" / "mesh.glb").is_file() and (run / "exports" / "gaussians_frames").is_dir()

    # scripts/track4d.py on the run: at the canonical time (0.5, the middle of 3 frames) the field is the identity,
    # so its centroid is the canonical Gaussians' own opacity-weighted one, worked here
    from dreamkit.components import load_representation_from_checkpoint
    from dreamkit.run import load_run

    track4d = load_script("track4d")
    track4d.main([str(run), "--frames", "3", "--out", str(tmp_path / "frames.png")])
    printed = [line.split("|")[2:5] for line in capsys.readouterr().out.splitlines() if line.startswith("| 0.500")]
    _, cfg, ckpt = load_run(run)
    model = load_representation_from_checkpoint(cfg, ckpt, torch.device("cpu"))
    w = torch.sigmoid(model.params["opacity_logits"].detach()).reshape(-1, 1)
    centroid = (w * model.params["means"].detach()).sum(0) / w.sum()
    assert len(printed) == 1 and [float(v) for v in printed[0]] == pytest.approx(centroid.tolist(), abs=1e-3)
    assert (tmp_path / "frames.png").is_file()


def test_short_4d_fit_resumes_exactly(tmp_path):
    """A 4D oracle fit (clips of 2 frames through the clip oracle, static stage then moving) killed after its step-20
    checkpoint and resumed ends with the same parameters as the uninterrupted run, and exports the animation."""
    from dreamkit.cli import main
    from dreamkit.run import run_folders

    common = ["fit", "--config", "gs4d_oracle.yaml", "prior.resolution=24", "prior.ssaa=1", "prior.frames=2",
              "camera.frames=2", "camera.width=24", "camera.height=24", "representation.num_points=300",
              "representation.densify.refine_start=10", "representation.densify.refine_every=10",
              "camera.time_range=[0, [9, 0, 1, 10]]", "trainer.max_steps=40", "trainer.checkpoint_every=20",
              "trainer.val_every=0", "trainer.progress=false", "camera.eval_views=4",
              "export.formats=[glb]", "export.mesh_resolution=32", "export.texture_size=64", "export.mesh_views=8",
              "export.mesh_preview=false", "export.turntable=false", "export.animation_keyframes=4",
              "report=false"]
    assert main(common + [f"output_dir={tmp_path / 'full'}"]) == 0
    (full,) = run_folders(tmp_path / "full")
    assert main(common + [f"output_dir={tmp_path / 'cut'}", "trainer.max_steps=20", "--no-export"]) == 0
    (cut,) = run_folders(tmp_path / "cut")
    assert main(["fit", f"resume={cut}", "trainer.max_steps=40", "trainer.progress=false", "--no-export"]) == 0
    from dreamkit.checkpoint import load_checkpoint

    a = load_checkpoint(full / "ckpts" / "last.ckpt")["state_dict"]
    b = load_checkpoint(cut / "ckpts" / "last.ckpt")["state_dict"]
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    glb = full / "exports" / "mesh.glb"
    doc, _ = _glb_json_and_bin(glb)
    assert len(doc["meshes"][0]["primitives"][0]["targets"]) == 4 and doc["animations"]


# ------------------------------------------------------------------------------------------------------------------
# motion scores (dreamkit eval)

class _TruthMotion(torch.nn.Module):
    """A stand-in 4D model whose field moves points exactly as ``motion`` does (from their τ = 0 place)."""

    def __init__(self, motion: Motion):
        super().__init__()
        self.motion = motion
        self.dummy = torch.nn.Parameter(torch.zeros(()))

    def displacement(self, points, taus):
        s0, r0, t0 = self.motion.transform(0.0)
        rest = torch.einsum("ij,vj->vi", r0[0].T, points - t0[0]) / s0[0]  # M(0)⁻¹
        return transform_points(rest, self.motion, taus) - points


@pytest.mark.parametrize("name", ["bouncing", "spinning", "moving left", "growing"])
def test_motion_score_of_the_truth_is_perfect_and_of_another_motion_is_not(name):
    from dreamkit.eval.motion import MovedScene, score_motion
    from dreamkit.world import parse_prompt

    scene, motion = parse_prompt("a red cube"), Motion(name)
    verts, faces, colours = MovedScene(scene, motion, 0.0).mesh()
    mesh = Mesh(verts.numpy(), faces.numpy(), vertex_colors=np.ones((len(verts), 3), np.float32))
    right = score_motion(_TruthMotion(motion), mesh, scene, motion)
    assert right["motion_ok"] and right["track_error"] < 1e-4 and right["yaw_error"] < 0.1, right
    assert right["scale_error"] < 1e-4
    other = Motion("moving right" if name != "moving right" else "moving left")
    wrong = score_motion(_TruthMotion(other), mesh, scene, motion)
    assert not wrong["motion_ok"], wrong
    still = score_motion(_TruthMotion(Motion("still")), mesh, scene, motion)
    assert not still["motion_ok"], still


def test_eval_scores_a_4d_fit_against_the_prompted_motion(tmp_path):
    """`dreamkit eval` with the 4D oracle recipe on a motion prompt: the oracle's target moves as prompted and the
    table has the motion scores."""
    import csv

    from dreamkit.cli import main

    out = tmp_path / "eval"
    code = main(["eval", "--config", "gs4d_oracle.yaml", "--prompts", "a red cube moving right", "--out", str(out),
                 "prior.resolution=24", "prior.ssaa=1", "camera.width=24", "camera.height=24",
                 "representation.num_points=300", "trainer.max_steps=30", "camera.time_range=[0, [9, 0, 1, 10]]",
                 "trainer.val_every=0", "trainer.progress=false", "camera.eval_views=4", "export.mesh_resolution=32",
                 "export.mesh_views=8",
                 "export.animation_keyframes=4"])
    assert code == 0
    (row,) = list(csv.DictReader(open(out / "results.csv")))
    assert row["motion"] == "moving right" and row["motion_ok"] in ("True", "False")
    assert math.isfinite(float(row["track_error"])) and float(row["travel_truth"]) == pytest.approx(1.0, abs=1e-3)
    cfg = OmegaConf.load(next((out / "runs").rglob("config.yaml")))
    assert cfg.prior.targets[0].motion == "moving right" and cfg.prior.targets[0].label == "a red cube moving right"


# ------------------------------------------------------------------------------------------------------------------
# composed guidance

SMALL = ["prior.resolution=24", "prior.ssaa=1", "camera.width=24", "camera.height=24", "representation.num_points=300",
         "representation.densify.refine_start=4", "representation.densify.refine_every=4", "trainer.val_every=0",
         "trainer.progress=false", "camera.eval_views=4", "camera.time_range=[0, 1]"]


def _composed(tmp_path, members: dict, loss: Optional[dict] = None) -> str:
    """A recipe file: gs4d_oracle.yaml with composed guidance of ``members`` and ``loss`` (default: every member's
    terms at 1)."""
    from dreamkit.config import load_recipe

    recipe = load_recipe("gs4d_oracle.yaml")
    recipe.guidance = OmegaConf.create({"name": "composed", "members": members})
    if loss is None:
        del recipe["loss"]
    else:
        recipe.loss = OmegaConf.create(loss)
    path = tmp_path / f"composed_{len(list(tmp_path.glob('composed_*.yaml')))}.yaml"
    OmegaConf.save(recipe, path)
    return str(path)


def test_composed_config_errors(tmp_path):
    from dreamkit.config import load_config

    image = {"probability": 0.5, "guidance": {"name": "sds", "guidance_scale": 1.0}}
    with pytest.raises(ConfigError, match="add up to 0.5"):
        load_config(_composed(tmp_path, {"image": image}))
    with pytest.raises(ConfigError, match="did you mean probability"):
        load_config(_composed(tmp_path, {"image": {**image, "probabilty": 1}}))
    with pytest.raises(ConfigError, match="guidance_scal"):
        load_config(_composed(tmp_path, {"image": {"probability": 1.0,
                                                   "guidance": {"name": "sds", "guidance_scal": 1}}}))
    cfg = load_config(_composed(tmp_path, {"a": image, "b": {**image, "camera": {"frames": 2}}}))
    assert set(cfg.loss) == {"lambda_a_sds", "lambda_b_sds"} and cfg.guidance.members.b.camera.frames == 2
    from dreamkit.priors.configs import build_prior
    from dreamkit.system import DreamSystem

    with pytest.raises(ConfigError, match="members.b.camera.frames=2"):
        DreamSystem(cfg).attach_prior(build_prior(cfg.prior, torch.device("cpu")))
    with pytest.raises(ConfigError, match="translation='camera' — give one of world, viewer, removed"):
        load_config(_composed(tmp_path, {"a": {**image, "probability": 1.0, "translation": "camera"}}))
    cfg = load_config(_composed(tmp_path, {"a": {**image, "translation": "viewer"}, "b": image}))
    system = DreamSystem(cfg)
    system.attach_prior(build_prior(cfg.prior, torch.device("cpu")))
    from types import SimpleNamespace

    assert system.guidance.render_options(0, SimpleNamespace(member=0)) == {"translation": "viewer"}
    assert system.guidance.render_options(0, SimpleNamespace(member=1)) == {}
    with pytest.raises(ConfigError, match="members.a.translation=viewer needs a representation that moves"):
        system.guidance.check_representation(GaussianModel.__new__(GaussianModel))


def test_composed_member_prompt_templates(tmp_path):
    """A member's prompt template: {object} drops the world's trailing motion (case kept), {prompt} is the recipe's
    prompt; each member's prior is checked against its own prompt; bad templates are config errors."""
    from dreamkit.config import load_config
    from dreamkit.guidance.composed import member_prompt, object_text
    from dreamkit.priors.configs import build_prior
    from dreamkit.system import DreamSystem

    assert object_text("A red cube  bouncing.") == "A red cube"
    assert object_text("a house moving left") == "a house"
    assert object_text("a house still") == "a house"
    assert object_text("a red cube") == "a red cube"
    assert object_text("a red cube on top of a blue sphere spinning") == "a red cube on top of a blue sphere"
    assert member_prompt(None, "a house bouncing") == "a house bouncing"
    assert member_prompt("{object}, a photo", "a house bouncing") == "a house, a photo"
    assert member_prompt("{prompt}", "a house bouncing") == "a house bouncing"
    house = {"type": "oracle", "targets": [{"mesh": "meshes/house.ply", "label": "a house"}], "resolution": 24}
    image = {"probability": 0.5, "guidance": {"name": "sds", "guidance_scale": 1.0}, "prior": house}
    video = {"probability": 0.5, "guidance": {"name": "sds", "guidance_scale": 1.0}, "prompt": "{prompt}"}
    for bad, match in (("{motion}", r"unknown field \{motion\}"), ("", "give a prompt template"),
                       ("{object", "literal braces")):
        with pytest.raises(ConfigError, match=match):
            load_config(_composed(tmp_path, {"image": {**image, "prompt": bad}, "video": video}))
    cfg = load_config(_composed(tmp_path, {"image": {**image, "prompt": "{object}"}, "video": video}))
    system = DreamSystem(cfg)
    system.attach_prior(build_prior(cfg.prior, torch.device("cpu")))
    members = system.guidance_module.members
    assert [m.prompt for m in members] == ["a house", "a house bouncing"]
    # without the template the image member's prior (labelled "a house") cannot express "a house bouncing"
    cfg = load_config(_composed(tmp_path, {"image": image, "video": video}))
    with pytest.raises(DreamkitError, match="cannot express the prompt 'a house bouncing'"):
        DreamSystem(cfg).attach_prior(build_prior(cfg.prior, torch.device("cpu")))


def test_one_member_composed_is_the_member_alone_bitwise(tmp_path):
    """guidance.name=composed with one member (probability 1) trains exactly as that guidance uncomposed."""
    from dreamkit.checkpoint import load_checkpoint
    from dreamkit.cli import main
    from dreamkit.run import run_folders

    steps = ["trainer.max_steps=8", "--no-export"]
    assert main(["fit", "--config", "gs4d_oracle.yaml", *SMALL, *steps, f"output_dir={tmp_path / 'plain'}"]) == 0
    member = {"image": {"probability": 1.0, "guidance": {"name": "sds", "guidance_scale": 1.0,
                                                         "max_step_percent": [0, 0.98, 0.5, 400]}}}
    recipe = _composed(tmp_path, member, {"lambda_image_sds": 1.0, "lambda_deform_tv": 0.1,
                                          "lambda_deform_smooth": 1.0})
    assert main(["fit", "--config", recipe, *SMALL, *steps, f"output_dir={tmp_path / 'composed'}"]) == 0
    (a,), (b,) = run_folders(tmp_path / "plain"), run_folders(tmp_path / "composed")
    sa, sb = load_checkpoint(a / "ckpts" / "last.ckpt")["state_dict"], load_checkpoint(b / "ckpts" / "last.ckpt")["state_dict"]
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def test_composed_members_alternate_with_their_own_layouts_and_resume_exactly(tmp_path):
    """Image SDS at single times and video SDS on 2-frame clips of the clip oracle, each with probability 0.5: both
    members' terms are logged, the choice follows the probabilities, and a cut + resume equals the straight run."""
    import csv

    from dreamkit.checkpoint import load_checkpoint
    from dreamkit.cli import main
    from dreamkit.run import run_folders

    members = {"image": {"probability": 0.5, "guidance": {"name": "sds", "guidance_scale": 1.0}},
               "video": {"probability": 0.5, "guidance": {"name": "sds", "guidance_scale": 1.0, "motion_amp": 3.0},
                         "prior": {"type": "oracle", "resolution": 24, "ssaa": 1, "frames": 2,
                                   "targets": [{"mesh": "meshes/house.ply", "label": "a house bouncing",
                                                "motion": "bouncing"}]},
                         "camera": {"frames": 2, "batch_size": 4}}}
    common = ["fit", "--config", _composed(tmp_path, members), *SMALL, "trainer.log_every=1",
              "trainer.checkpoint_every=10", "--no-export"]
    assert main(common + ["trainer.max_steps=20", f"output_dir={tmp_path / 'full'}"]) == 0
    assert main(common + ["trainer.max_steps=10", f"output_dir={tmp_path / 'cut'}"]) == 0
    (full,), (cut,) = run_folders(tmp_path / "full"), run_folders(tmp_path / "cut")
    assert main(["fit", f"resume={cut}", "trainer.max_steps=20", "trainer.progress=false", "--no-export"]) == 0
    a, b = load_checkpoint(full / "ckpts" / "last.ckpt"), load_checkpoint(cut / "ckpts" / "last.ckpt")
    for k in a["state_dict"]:
        assert torch.equal(a["state_dict"][k], b["state_dict"][k]), k
    rows = [r for r in csv.DictReader(open(full / "logs" / "metrics.csv")) if r.get("train/member")]
    assert len(rows) == 20

    def logged(value: str) -> bool:
        return value not in ("", "nan") and math.isfinite(float(value))

    image = [r for r in rows if r["train/member"] == "0.0"]
    video = [r for r in rows if r["train/member"] == "1.0"]
    assert image and video and len(image) + len(video) == 20
    assert all(logged(r["train/loss_image_sds"]) and not logged(r["train/loss_video_sds"]) for r in image)
    assert all(logged(r["train/loss_video_sds"]) and not logged(r["train/loss_image_sds"]) for r in video)


# ------------------------------------------------------------------------------------------------------------------
# 4D volume fields (NeRF, triplane: a static field plus a space-time one)

@pytest.mark.parametrize("name", ["nerf", "triplane"])
def test_time_field_starts_static_and_learns_time(name):
    from dreamkit.config import load_config
    from dreamkit.components import build_representation

    small = ["representation.num_samples=16", "representation.occ_resolution=0"]
    if name == "nerf":
        small += ["representation.log2_hashmap_size=12", "representation.n_levels=4"]
    else:
        small += ["representation.plane_resolution=16"]
    static = build_representation(load_config(f"{name}_oracle.yaml", small), torch.Generator().manual_seed(0))
    cfg = load_config(f"{name}_oracle.yaml", small + ["representation.time_field=true",
                                                       "representation.time_space_resolution=8",
                                                       "representation.time_resolution=4"])
    model = build_representation(cfg, torch.Generator().manual_seed(0))
    assert model.dynamic and not static.dynamic
    cams = orbit_cameras(3, 12, 12, elevation=15, distance=2.75, fovy=40)
    model.eval(), static.eval()
    with torch.no_grad():
        ref = static.render(cams, background=torch.ones(3, 3)).rgb
        cams.time = torch.tensor([0.9, 0.1, 0.5])
        assert torch.equal(model.render(cams, background=torch.ones(3, 3)).rgb, ref)  # the same static field
    model.train()
    opt = torch.optim.Adam([p for g in model.parameter_groups() for p in g["params"]], lr=5e-2)
    for _ in range(3):  # pull the render at τ = 0.9 towards red only
        out = model.render(cams[0:1], background=torch.ones(1, 3))
        loss = (out.rgb - torch.tensor([1.0, 0.0, 0.0])).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        late, early = cams[0:1], cams[0:1]
        early = early.__class__(early.c2w, early.K, early.width, early.height, early.elevation, early.azimuth,
                                early.distance, early.fovy, torch.tensor([0.0]))
        a, b = model.render(late, background=torch.ones(1, 3)).rgb, model.render(early, background=torch.ones(1, 3)).rgb
    assert (a - b).abs().max() > 1e-3  # the field now depends on τ
    frozen = model.at_time(0.9)
    with torch.no_grad():
        assert torch.allclose(frozen.render(early, background=torch.ones(1, 3)).rgb, a, atol=1e-6)
