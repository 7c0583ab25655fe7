"""The tiny video prior (frames as views, frame time in the class embedding): its exact reduction to the image prior
at init, frame order through the time embedding only, shapes and one timestep per clip; the world's clips it is
trained on; the shipped folder when it exists. Tiny random models built here, a few seconds."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from dreamkit.batch import Batch, Layout
from dreamkit.priors.multiview import TIME_DIM, CondMap, time_features
from dreamkit.priors.pixel import PixelDiffusionPrior
from dreamkit.priors.sampling import sample_clip_cameras
from dreamkit.priors.tiny_pixel import TEXT_DIM, build_tiny_random_pixel_prior, init_unet_from

F = 8
R = 16
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def image_prior(tmp_path_factory):
    folder = build_tiny_random_pixel_prior(tmp_path_factory.mktemp("t2i"), resolution=R, seed=0)
    return PixelDiffusionPrior(str(folder), warn_outside_world=False)


def _video_from(image_prior, folder: Path, frames: int = F, frame_input=None,
                class_condition: str = "pooled_text+time") -> PixelDiffusionPrior:
    """A video prior folder whose UNet starts from ``image_prior``'s weights (the training script's init)."""
    from diffusers import UNet2DConditionModel

    build_tiny_random_pixel_prior(folder, resolution=R, seed=1, frames=frames, class_condition=class_condition,
                                  frame_input=frame_input)
    unet = UNet2DConditionModel.from_pretrained(folder / "unet")
    init_unet_from(unet, image_prior.unet.state_dict())
    unet.save_pretrained(folder / "unet", safe_serialization=True)
    return PixelDiffusionPrior(str(folder), warn_outside_world=False)


@pytest.fixture(scope="module")
def random_video(tmp_path_factory):
    """A random video prior (its time columns random too)."""
    folder = build_tiny_random_pixel_prior(tmp_path_factory.mktemp("video"), resolution=R, seed=2, frames=F,
                                           class_condition="pooled_text+time", frame_input="time_map")
    return PixelDiffusionPrior(str(folder), warn_outside_world=False)


def same_as_image_prior(video_out: torch.Tensor, image_out: torch.Tensor) -> None:
    """Equal up to float32 rounding of the widened class-embedding GEMM (zero columns added to its sum); a real
    difference (a time or motion column not zero, joint attention on) is ≥ 1e-4 here."""
    torch.testing.assert_close(video_out, image_out, rtol=0, atol=2e-6)


def _inputs(prior, clips: int = 2, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(clips * F, 3, R, R, generator=gen)
    t = torch.tensor([700, 250][:clips]).repeat_interleave(F)
    text = prior.encode_text(["a red cube bouncing", "a blue sphere moving left"][:clips])
    cond = text.cond.repeat_interleave(F, 0)
    cams = sample_clip_cameras(clips, F, R, tau0=0.03)
    return x, t, cond, cams


@pytest.mark.parametrize("frame_input", [None, "time_map"])
def test_video_prior_at_init_is_the_image_prior_per_frame_bitwise(image_prior, tmp_path, frame_input):
    video = _video_from(image_prior, tmp_path / "video", frame_input=frame_input)
    assert video.frames == F and video.views == 1 and video.class_condition == "pooled_text+time"
    weight = video.unet.class_embedding.linear_1.weight
    assert weight.shape[1] == TEXT_DIM + TIME_DIM and bool((weight[:, TEXT_DIM:] == 0).all())
    conv_in = video.unet.conv_in.weight
    assert conv_in.shape[1] == (6 if frame_input else 3) and bool((conv_in[:, 3:] == 0).all())
    x, t, cond, cams = _inputs(video)
    per_frame = image_prior.predict(x, t, cond)
    joint = video.predict(x, t, cond, cams)
    # the frames attend to each other: not the image prior yet ...
    assert (joint - per_frame).abs().max() > 1e-4
    # ... and with the joint attention off (the image prior's own processors) it is, to float32 rounding: the class
    # embedding's first layer now sums over 392 inputs instead of 384 (the 8 extra products are exact zeros), and a
    # CPU GEMM may block a longer sum differently — bitwise on one machine, the last bit apart on another
    video.unet.set_attn_processor(image_prior.unet.attn_processors)
    same_as_image_prior(video.predict(x, t, cond, cams), per_frame)
    # F = 1: no joint attention is installed, and the zero time columns leave the image prior, bitwise
    single = _video_from(image_prior, tmp_path / "single", frames=1, frame_input=frame_input)
    assert single.frames == 1 and "frames" not in json.loads((tmp_path / "single" / "model_index.json").read_text())
    same_as_image_prior(single.predict(x, t, cond, cams), per_frame)


def _permuted(prior, x, t, cond, cams, order):
    """The prior's output for clips whose frames are shown in ``order`` (each frame's time stays with its slot)."""
    idx = torch.cat([c * F + order for c in range(x.shape[0] // F)])
    return prior.predict(x[idx], t, cond, cams), idx


@pytest.mark.parametrize("keep", ["class embedding", "time map"])
def test_frame_order_comes_only_from_the_time_inputs(random_video, keep):
    """Time reaches the prior twice (class embedding, per-pixel time map): zeroed both, it cannot tell frame order;
    either alone breaks the symmetry."""
    x, t, cond, cams = _inputs(random_video)
    order = torch.tensor([3, 0, 7, 1, 6, 2, 5, 4])
    weight = random_video.unet.class_embedding.linear_1.weight
    conv_in = random_video.unet.conv_in.weight
    saved = weight.clone(), conv_in.clone()
    try:
        with torch.no_grad():
            weight[:, TEXT_DIM:] = 0
            conv_in[:, 5] = 0  # the time map's τ channel (x and y are the same in every frame)
        base = random_video.predict(x, t, cond, cams)
        shuffled, idx = _permuted(random_video, x, t, cond, cams, order)
        assert torch.allclose(shuffled, base[idx], atol=1e-5)  # time zeroed: equivariant to frame permutations
        assert (base[:F] - base[F:]).abs().max() > 1e-3  # (and not because everything is the same)
        with torch.no_grad():
            if keep == "class embedding":
                weight.copy_(saved[0])
            else:
                conv_in.copy_(saved[1])
        base = random_video.predict(x, t, cond, cams)
        shuffled, idx = _permuted(random_video, x, t, cond, cams, order)
        assert (shuffled - base[idx]).abs().max() > 1e-3  # time on: a shuffled clip is not the clip shuffled
    finally:
        with torch.no_grad():
            weight.copy_(saved[0])
            conv_in.copy_(saved[1])


def test_shapes_cameras_and_one_timestep_per_clip(random_video):
    x, t, cond, cams = _inputs(random_video)
    out = random_video.predict(x, t, cond, cams)
    assert out.shape == x.shape and out.dtype == torch.float32 and torch.isfinite(out).all()
    assert Layout.of_prior(random_video).frames == F
    t_bad = t.clone()
    t_bad[3] = 10
    with pytest.raises(ValueError, match="one timestep per clip"):
        random_video.predict(x, t_bad, cond, cams)
    with pytest.raises(ValueError, match="clips of 8 frames"):
        random_video.predict(x[:12], t[:12], cond[:12], cams[:12])
    with pytest.raises(ValueError, match="clips of 8 frames"):
        random_video.predict(x, t, cond, None)
    # the frame times reach the class embedding: other times, other output
    later = sample_clip_cameras(2, F, R, tau0=0.09)
    assert (random_video.predict(x, t, cond, later) - out).abs().max() > 1e-4


def test_time_map_by_hand(random_video):
    from dreamkit.priors.multiview import time_map

    cams = sample_clip_cameras(1, F, R, tau0=0.0)
    x = torch.zeros(F, 3, R, R)
    x_in = random_video.view_settings.unet_input(x, cams, torch.float32)
    assert x_in.shape == (F, 6, R, R) and torch.equal(x_in[:, :3], x)
    assert torch.equal(x_in[:, 3:], time_map(cams.time, R, R))
    assert torch.allclose(x_in[2, 5], torch.full((R, R), 2 * 2 / F - 1))  # frame 2 at τ = 2/8
    assert torch.allclose(x_in[0, 3, 0, :], (torch.arange(R) + 0.5) / R * 2 - 1)  # x grows to the right
    assert torch.allclose(x_in[0, 4, :, 0], (torch.arange(R) + 0.5) / R * 2 - 1)  # y grows downwards


def test_time_features_by_hand():
    tau = torch.tensor([0.0, 0.125, 0.3])
    k = torch.arange(1, 5, dtype=torch.float32)
    expected = torch.cat([torch.sin(2 * torch.pi * tau[:, None] * k), torch.cos(2 * torch.pi * tau[:, None] * k)], 1)
    assert torch.allclose(time_features(tau), expected, atol=1e-6)
    assert time_features(tau).shape == (3, TIME_DIM)


def test_time_window_shows_the_prior_remapped_times(random_video):
    """``prior.time_window`` [lo, hi]: the prior's output for clip times τ is its plain output at lo + τ·(hi − lo),
    exactly; the periodic time features are why (τ = 0 and τ = 1 are one input to them); bad windows and a window on
    an image prior are clear errors."""
    import dataclasses

    from dreamkit.errors import DreamkitError

    assert torch.allclose(time_features(torch.tensor([0.0])), time_features(torch.tensor([1.0])), atol=1e-6)
    windowed = PixelDiffusionPrior(str(random_video.folder), warn_outside_world=False, time_window=(0.0625, 0.9375))
    x, t, cond, cams = _inputs(random_video)
    cams = dataclasses.replace(cams, time=torch.linspace(0, 1, len(cams)))
    moved = dataclasses.replace(cams, time=0.0625 + cams.time * 0.875)
    assert torch.equal(windowed.predict(x, t, cond, cams), random_video.predict(x, t, cond, moved))
    assert not torch.allclose(windowed.predict(x, t, cond, cams), random_video.predict(x, t, cond, cams))
    for bad in [(0.5, 0.5), (-0.1, 0.9), (0.2, 1.2), (0.1,)]:
        with pytest.raises(DreamkitError, match="time_window"):
            PixelDiffusionPrior(str(random_video.folder), warn_outside_world=False, time_window=bad)


def test_time_window_on_an_image_prior_is_refused_before_any_work(image_prior):
    from dreamkit.errors import DreamkitError

    cfg = OmegaConf.create({"type": "pixel", "name": str(image_prior.folder), "time_window": [0.1, 0.9]})
    with pytest.raises(DreamkitError, match="for video priors"):
        PixelDiffusionPrior.check_config(cfg)
    PixelDiffusionPrior.check_config(OmegaConf.create({"type": "pixel", "name": str(image_prior.folder),
                                                       "time_window": [0.0, 1.0]}))


def test_score_distillation_drives_it_with_one_t_per_clip(random_video):
    from dreamkit.guidance.sds import SDSConfig, SDSGuidance

    guidance = SDSGuidance(OmegaConf.structured(SDSConfig(guidance_scale=5.0)), random_video, 100)
    cams = sample_clip_cameras(2, F, R, tau0=0.05)
    images = torch.rand(2 * F, 3, R, R, generator=torch.Generator().manual_seed(3), requires_grad=True)
    text = random_video.encode_text(["a red cube bouncing"])
    batch = Batch(cams, type(text)(text.cond.expand(2 * F, -1, -1), text.uncond.expand(2 * F, -1, -1),
                                   ["a red cube bouncing"] * (2 * F)), Layout(frames=F))
    out = guidance.distill(images, batch, 10, torch.Generator().manual_seed(0))
    out["loss_sds"].backward()
    assert torch.isfinite(images.grad).all() and images.grad.abs().sum() > 0


# ---------------------------------------------------------------------------------------------------------- clips
def _centroids(images: torch.Tensor, background) -> torch.Tensor:
    """[F, H, W, 3] uint8 → [F, 2] (x, y) centroid of the pixels that are not background."""
    bg = torch.tensor(background) * 255
    mask = ((images.float() - bg).abs().sum(-1) > 30).float()
    ys, xs = torch.meshgrid(torch.arange(images.shape[1], dtype=torch.float32),
                            torch.arange(images.shape[2], dtype=torch.float32), indexing="ij")
    area = mask.sum((1, 2)).clamp_min(1)
    return torch.stack([(mask * xs).sum((1, 2)) / area, (mask * ys).sum((1, 2)) / area], -1)


def test_world_clips_move_as_captioned_and_are_deterministic(tmp_path):
    from dreamkit.world.clips import build_clip_dataset, load_clip_dataset

    weights = {"still": 1.0, "moving left": 1.0, "moving right": 1.0, "bouncing": 1.0}
    kinds = {"single": 1.0}
    build_clip_dataset(tmp_path / "a", 24, seed=3, resolution=24, motion_weights=weights, kind_weights=kinds)
    build_clip_dataset(tmp_path / "b", 24, seed=3, resolution=24, motion_weights=weights, kind_weights=kinds)
    assert (tmp_path / "a" / "shard_00000.pt").read_bytes() == (tmp_path / "b" / "shard_00000.pt").read_bytes()
    meta, data = load_clip_dataset(tmp_path / "a")
    assert data["images"].shape == (24, F, 24, 24, 3) and meta["frames"] == F
    steps = data["time"].diff(dim=1)
    assert torch.allclose(steps, torch.full_like(steps, 1 / F), atol=1e-6)
    assert bool((data["time"][:, 0] >= 0).all() and (data["time"][:, 0] < 1 / F).all())
    seen = set()
    for i in range(24):
        motion = meta["motions"][int(data["motion"][i])]
        caption = meta["captions"][int(data["caption"][i])]
        scene = meta["scenes"][int(data["scene"][i])]
        seen.add(motion)
        c = _centroids(data["images"][i], meta["background"])
        if motion == "still":
            assert not caption.endswith(tuple(" " + m for m in meta["motions"] if m != "still"))
            assert (c - c[0]).abs().max() < 0.5
        else:
            assert caption.endswith(" " + motion)
            if motion in ("moving left", "moving right"):  # the viewer's left and right, from any azimuth
                dx = c[1:, 0] - c[:-1, 0]
                assert bool((dx < 0).all()) if motion == "moving left" else bool((dx > 0).all()), (i, c[:, 0])
            else:  # image y grows downwards: the bounce goes up, then down
                top = int(c[:, 1].argmin())
                assert 0 < top < F - 1 and c[0, 1] - c[top, 1] > 2 and c[-1, 1] - c[top, 1] > 2
    assert seen == set(weights)


def test_a_spin_starts_in_the_viewers_frame():
    """A spinning clip's phase is the viewer's: the object is first turned by the camera's azimuth, so the
    silhouettes seen from azimuth 70° are the ones seen from the front (the lighting, fixed in the world, may differ),
    while a still object's silhouette from 70° is not the front's; world-frame rendering keeps the world's phase."""
    from dreamkit.cameras import cameras_from_spherical
    from dreamkit.world.clips import render_clip
    from dreamkit.world.scenes import all_single_scenes

    cube = next(s for s in all_single_scenes() if s.caption == "a red cube")
    bg = (0.9, 0.9, 0.9)

    def masks(azimuth, motion, viewer_frame=True):
        n = F
        cams = cameras_from_spherical(torch.full((n,), 15.0), torch.full((n,), float(azimuth)),
                                      torch.full((n,), 2.75), torch.full((n,), 40.0), 32, 32,
                                      time=torch.arange(n) / n)
        rgb = render_clip(cube, motion, cams, background=bg, viewer_frame=viewer_frame)
        return ((rgb - torch.tensor(bg)).abs().amax(-1) > 0.05).float()

    front, side = masks(0, "spinning"), masks(70, "spinning")
    assert (front - side).abs().mean() < 0.01
    assert (masks(0, "still") - masks(70, "still")).abs().mean() > 0.02
    assert (front - masks(70, "spinning", viewer_frame=False)).abs().mean() > 0.02
    assert (front[1:] - front[:-1]).abs().mean() > 0.02  # and it turns


# ---------------------------------------------------------------------------------------------- shipped prior
SHIPPED = ROOT / "assets" / "priors" / "tiny-video"


@pytest.mark.skipif(not SHIPPED.is_dir(), reason="assets/priors/tiny-video is not shipped in this checkout")
def test_shipped_tiny_video_folder():
    size = sum(f.stat().st_size for f in SHIPPED.rglob("*") if f.is_file())
    assert size <= 30 * 2 ** 20
    assert not list(SHIPPED.rglob("*.bin")) and not list(SHIPPED.rglob("*.pt"))  # safetensors only
    prior = PixelDiffusionPrior("tiny-video", warn_outside_world=False)
    assert prior.frames == 8 and prior.resolution == 32
    assert prior.class_condition == "pooled_text+time+motion" and prior.view_settings.frame_input == "cond_map"
    assert prior.view_settings.time_input == "harmonics+ramp"  # tells a clip's start from its end
    # trained: the time and motion columns of the class embedding and the map's zero-initialised last layer moved
    assert prior.unet.class_embedding.linear_1.weight[:, TEXT_DIM:].abs().max() > 1e-3
    cond_map = getattr(prior.unet, CondMap.ATTRIBUTE)
    assert cond_map.cross is not None and cond_map.linear_2.weight.abs().max() > 1e-3
    ramp = TEXT_DIM + TIME_DIM  # the ramp's column, zero at the start of its training run: it learned
    assert prior.unet.class_embedding.linear_1.weight[:, ramp].abs().max() > 1e-3
    assert cond_map.linear_1.weight[:, ramp].abs().max() > 1e-3
    # it knows its motions: "moving left" and "moving right" clips are captions it was trained on
    assert {"a red cube moving left", "a blue sphere bouncing", "a red cube spinning"} <= set(prior.world_captions)


# ------------------------------------------------------------------------------- diffusers text-to-video adapter
T2V_F = 4


@pytest.fixture(scope="module")
def tiny_t2v_dir(tmp_path_factory):
    from dreamkit.priors.tiny_random import build_tiny_t2v

    return build_tiny_t2v(tmp_path_factory.mktemp("t2v"), frames=T2V_F)


@pytest.fixture(scope="module")
def t2v(tiny_t2v_dir):
    from dreamkit.priors.diffusers_video import TextToVideoPrior

    return TextToVideoPrior(str(tiny_t2v_dir))


def _clips(prior, n=2, seed=0):
    gen = torch.Generator().manual_seed(seed)
    side = prior.resolution // prior.vae_scale_factor
    x = torch.randn(n * T2V_F, 4, side, side, generator=gen)
    t = torch.tensor([800, 120, 450][:n]).repeat_interleave(T2V_F)
    cond = prior.encode_text(["a red cube bouncing", "a blue ball moving left", "a car"][:n]).cond
    return x, t, cond.repeat_interleave(T2V_F, 0)


def test_t2v_folder_is_modelscope_layout_and_loads_as_a_clip_prior(tiny_t2v_dir, t2v):
    from diffusers import UNet3DConditionModel

    from dreamkit.registry import component_class

    index = json.loads((tiny_t2v_dir / "model_index.json").read_text())
    assert index["_class_name"] == "TextToVideoSDPipeline" and index["unet"] == ["diffusers", "UNet3DConditionModel"]
    assert isinstance(t2v.unet, UNet3DConditionModel) and t2v.frames == T2V_F and t2v.views == 1
    assert t2v.latent and t2v.channels == 4 and t2v.resolution == 16
    assert not any(p.requires_grad for p in t2v.parameters())
    assert component_class("prior", "text-to-video", "prior.type") is type(t2v)


def test_t2v_predict_is_the_unet_on_clips(t2v):
    """[n·F, 4, h, w] in, the UNet on [n, 4, F, h, w] with one t and one text per clip, ε̂ back in the input layout."""
    x, t, cond = _clips(t2v)
    out = t2v.predict(x, t, cond)
    n, (c, h, w) = x.shape[0] // T2V_F, x.shape[1:]
    by_hand = t2v.unet(x.reshape(n, T2V_F, c, h, w).permute(0, 2, 1, 3, 4), t[::T2V_F],
                       encoder_hidden_states=cond[::T2V_F]).sample
    assert torch.equal(out, by_hand.permute(0, 2, 1, 3, 4).reshape_as(x))
    # each clip is denoised alone (the second clip does not change the first's output) ...
    assert torch.allclose(t2v.predict(x[:T2V_F], t[:T2V_F], cond[:T2V_F]), out[:T2V_F], atol=1e-5)
    # ... and its frames together, in order: reversing a clip is not its output reversed
    rev = torch.arange(T2V_F - 1, -1, -1)
    assert (t2v.predict(x[:T2V_F][rev], t[:T2V_F], cond[:T2V_F]) - out[:T2V_F][rev]).abs().max() > 1e-4


def test_t2v_v_prediction_is_converted(tmp_path):
    from dreamkit.priors.diffusers_video import TextToVideoPrior
    from dreamkit.priors.tiny_random import build_tiny_t2v

    prior = TextToVideoPrior(str(build_tiny_t2v(tmp_path / "v", frames=T2V_F, prediction_type="v_prediction")))
    x, t, cond = _clips(prior, n=1)
    v = prior.unet(x.reshape(1, T2V_F, 4, 8, 8).transpose(1, 2), t[:1], encoder_hidden_states=cond[:1]).sample
    v = v.transpose(1, 2).reshape_as(x)
    abar = prior.alphas_cumprod[t].view(-1, 1, 1, 1)
    assert torch.allclose(prior.predict(x, t, cond), abar.sqrt() * v + (1 - abar).sqrt() * x, atol=1e-6)


def test_t2v_errors(t2v, tiny_t2v_dir, tmp_path):
    import shutil

    from dreamkit.errors import DreamkitError
    from dreamkit.priors.diffusers_video import TextToVideoPrior

    x, t, cond = _clips(t2v)
    t_bad = t.clone()
    t_bad[1] = 3
    with pytest.raises(ValueError, match="one timestep per clip"):
        t2v.predict(x, t_bad, cond)
    with pytest.raises(ValueError, match="clips of 4 frames"):
        t2v.predict(x[:6], t[:6], cond[:6])
    mixed = cond.clone()
    mixed[1] = cond[T2V_F]
    with pytest.raises(ValueError, match="one text per clip"):
        t2v.predict(x, t, mixed)
    # frames: from prior.frames, else model_index.json, else a one-line error naming prior.frames
    bare = tmp_path / "bare"
    shutil.copytree(tiny_t2v_dir, bare)
    index = json.loads((bare / "model_index.json").read_text())
    del index["frames"]
    (bare / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(DreamkitError, match="prior.frames=F") as info:
        TextToVideoPrior(str(bare))
    assert "\n" not in str(info.value)
    assert TextToVideoPrior(str(bare), frames=2).frames == 2
    # weights from someone else are read from safetensors only, never unpickled
    from diffusers import UNet3DConditionModel

    unet = UNet3DConditionModel.from_pretrained(bare / "unet")
    shutil.rmtree(bare / "unet")
    unet.save_pretrained(bare / "unet", safe_serialization=False)
    with pytest.raises(DreamkitError, match="unet/ has no .safetensors"):
        TextToVideoPrior(str(bare), frames=2)


def test_t2v_through_the_config_and_video_sds(t2v, tiny_t2v_dir):
    from dreamkit.config import merge_structured
    from dreamkit.guidance.sds import SDSConfig, SDSGuidance
    from dreamkit.priors.configs import TextToVideoPriorConfig, build_prior

    cfg = merge_structured(TextToVideoPriorConfig, {"name": str(tiny_t2v_dir)}, prefix="prior")
    prior = build_prior(cfg, torch.device("cpu"))
    assert prior.frames == T2V_F
    guidance = SDSGuidance(OmegaConf.structured(SDSConfig(guidance_scale=7.5)), prior, 100)
    cams = sample_clip_cameras(2, T2V_F, 16)
    images = torch.rand(2 * T2V_F, 3, 16, 16, generator=torch.Generator().manual_seed(1), requires_grad=True)
    text = prior.encode_text(["a red cube bouncing"])
    batch = Batch(cams, type(text)(text.cond.expand(2 * T2V_F, -1, -1), text.uncond.expand(2 * T2V_F, -1, -1),
                                   ["a red cube bouncing"] * (2 * T2V_F)), Layout(frames=T2V_F))
    out = guidance.distill(images, batch, 10, torch.Generator().manual_seed(0))
    out["loss_sds"].backward()
    assert torch.isfinite(images.grad).all() and images.grad.abs().sum() > 0


def test_dreamkit_sample_writes_a_video_priors_clips(random_video, tiny_t2v_dir, tmp_path):
    import imageio.v2 as imageio

    from dreamkit.cli import main

    for folder, frames, side in ((random_video.folder, F, R), (tiny_t2v_dir, T2V_F, 16)):
        out = tmp_path / f"{Path(folder).name}.png"
        assert main(["sample", "--prior", str(folder), "a red cube bouncing", "a car", "--steps", "2", "--clips",
                     "2", "--seed", "1", "-o", str(out)]) == 0
        grid = imageio.imread(out)
        assert grid.shape[:2] == (4 * side, frames * side)  # a row per clip (2 prompts × 2), a column per frame
        assert out.with_suffix(".mp4").stat().st_size > 0


# ------------------------------------------------------------------------------------- the motion one-hot (+motion)
def test_motion_token_by_hand():
    from dreamkit.priors.multiview import motion_token
    from dreamkit.world.motion import MOTIONS

    texts = ["a red cube moving left", "A red cube moving right.", "a red cube", "", "a house spinning",
             "a blue sphere still"]
    token = motion_token(texts, MOTIONS, 12)
    assert token.shape == (6, 1, 12)
    expected = torch.zeros(6, 12)
    for row, name in enumerate(["moving left", "moving right", "still", None, "spinning", "still"]):
        if name is not None:
            expected[row, MOTIONS.index(name)] = 1.0
    assert torch.equal(token[:, 0], expected)
    # a motion the prior was not trained on: no one-hot
    assert torch.equal(motion_token(["a red cube bouncing"], ("still", "spinning"), 4), torch.zeros(1, 1, 4))


def test_motion_conditioned_video_prior_starts_as_the_image_prior_and_reads_the_motion(image_prior, tmp_path):
    from dreamkit.world.motion import MOTIONS

    video = _video_from(image_prior, tmp_path / "video", class_condition="pooled_text+time+motion")
    index = json.loads((tmp_path / "video" / "model_index.json").read_text())
    assert index["motions"] == list(MOTIONS) and video.view_settings.motions == tuple(MOTIONS)
    weight = video.unet.class_embedding.linear_1.weight
    assert weight.shape[1] == TEXT_DIM + TIME_DIM + len(MOTIONS) and bool((weight[:, TEXT_DIM:] == 0).all())
    prompts = ["a red cube moving left", "a blue sphere bouncing"]
    text = video.encode_text(prompts)
    plain = image_prior.encode_text(prompts)
    # one more token than the image prior's: the motion one-hot; the negative ("") has none set
    assert text.cond.shape[1] == plain.cond.shape[1] + 1 and torch.equal(text.cond[:, :-1], plain.cond)
    assert text.cond[0, -1, MOTIONS.index("moving left")] == 1 and text.cond[1, -1, MOTIONS.index("bouncing")] == 1
    assert float(text.uncond[:, -1].abs().sum()) == 0
    x, t, _, cams = _inputs(video)
    cond = text.cond.repeat_interleave(F, 0)
    video.unet.set_attn_processor(image_prior.unet.attn_processors)
    # at init, the image prior per frame to the bit: the cross-attention does not see the motion token
    same_as_image_prior(video.predict(x, t, cond, cams), image_prior.predict(x, t, plain.cond.repeat_interleave(F, 0)))
    right = video.encode_text(["a red cube moving right", "a blue sphere bouncing"]).cond.repeat_interleave(F, 0)
    # the motion reaches the output through its class-embedding columns only
    swapped = cond.clone()
    swapped[:, -1] = right[:, -1]  # same text tokens, the other motion
    assert torch.equal(video.predict(x, t, swapped, cams), video.predict(x, t, cond, cams))
    with torch.no_grad():
        weight[:, TEXT_DIM + TIME_DIM:] = torch.randn_like(weight[:, TEXT_DIM + TIME_DIM:])
    assert (video.predict(x, t, swapped, cams) - video.predict(x, t, cond, cams)).abs().max() > 1e-4
    labels = video.view_settings.class_labels(cond, cams, "cpu", torch.float32)
    assert torch.equal(labels[:, TEXT_DIM + TIME_DIM:], cond[:, -1, : len(MOTIONS)])


def test_motion_condition_needs_its_motion_list(image_prior, tmp_path):
    from dreamkit.errors import DreamkitError

    _video_from(image_prior, tmp_path / "video", class_condition="pooled_text+time+motion")
    index_file = tmp_path / "video" / "model_index.json"
    index = json.loads(index_file.read_text())
    index_file.write_text(json.dumps({k: v for k, v in index.items() if k != "motions"}))
    with pytest.raises(DreamkitError, match="needs \"motions\""):
        PixelDiffusionPrior(str(tmp_path / "video"), warn_outside_world=False)
    index_file.write_text(json.dumps({**index, "motions": index["motions"][:-1]}))
    with pytest.raises(DreamkitError, match="do not fit the UNet's class embedding"):
        PixelDiffusionPrior(str(tmp_path / "video"), warn_outside_world=False)


def test_frames_on_their_own_start_as_the_image_prior_without_swapping_processors(image_prior, tmp_path):
    """frame_attention "none": no joint attention is installed, so at init the video prior is the image prior per
    frame as it stands; a bad value is refused by name."""
    from dreamkit.errors import DreamkitError

    folder = tmp_path / "video"
    _video_from(image_prior, folder, class_condition="pooled_text+time+motion")
    index_file = folder / "model_index.json"
    index = json.loads(index_file.read_text())
    index_file.write_text(json.dumps({**index, "frame_attention": "none"}))
    video = PixelDiffusionPrior(str(folder), warn_outside_world=False)
    assert video.view_settings.frame_attention == "none" and video.frames == F
    assert not any(type(p).__name__ == "MultiViewAttnProcessor" for p in video.unet.attn_processors.values())
    prompts = ["a red cube moving left", "a blue sphere bouncing"]
    x, t, _, cams = _inputs(video)
    same_as_image_prior(video.predict(x, t, video.encode_text(prompts).cond.repeat_interleave(F, 0), cams),
                        image_prior.predict(x, t, image_prior.encode_text(prompts).cond.repeat_interleave(F, 0)))
    index_file.write_text(json.dumps({**index, "frame_attention": "temporal"}))
    with pytest.raises(DreamkitError, match="frame_attention 'temporal'"):
        PixelDiffusionPrior(str(folder), warn_outside_world=False)


def test_cond_map_prior_starts_as_the_image_prior_and_its_map_reaches_the_output_by_motion_and_time(image_prior,
                                                                                                  tmp_path):
    """frame_input cond_map (a learned map of the class-embedding input appended to the UNet input): stored beside the
    UNet as safetensors, exactly the image prior at init even with conv_in's map weights random (the map is 0), and
    once its last layer is not zero the output depends on the motion and each frame's time through it."""
    from dreamkit.errors import DreamkitError
    from dreamkit.priors.multiview import COND_MAP_CHANNELS, COND_MAP_FILE, CondMap
    from dreamkit.world.motion import MOTIONS

    folder = tmp_path / "video"
    video = _video_from(image_prior, folder, frame_input="cond_map", class_condition="pooled_text+time+motion")
    from safetensors import safe_open

    with safe_open(str(folder / "unet" / "diffusion_pytorch_model.safetensors"), "pt") as f:
        assert not [k for k in f.keys() if k.startswith(CondMap.ATTRIBUTE)]  # a plain diffusers UNet folder
    assert (folder / COND_MAP_FILE).is_file()
    cond_map = getattr(video.unet, CondMap.ATTRIBUTE)
    assert not any(p.requires_grad for p in cond_map.parameters())  # frozen with the prior
    # its input: the class-embedding input and the products of the motion one-hot with the time harmonics
    assert cond_map.cross == (TIME_DIM, len(MOTIONS))
    assert cond_map.linear_1.weight.shape[1] == TEXT_DIM + TIME_DIM + len(MOTIONS) + TIME_DIM * len(MOTIONS)
    lab = torch.randn(2, TEXT_DIM + TIME_DIM + len(MOTIONS))
    feats = cond_map.features(lab)
    m, k = 3, 5
    assert torch.equal(feats[:, : lab.shape[1]], lab)
    assert torch.equal(feats[:, lab.shape[1] + m * TIME_DIM + k], lab[:, TEXT_DIM + TIME_DIM + m] * lab[:, TEXT_DIM + k])
    conv_in = video.unet.conv_in.weight
    assert conv_in.shape[1] == 3 + 3 + COND_MAP_CHANNELS
    with torch.no_grad():  # as the training script starts it: the map's conv_in weights random
        conv_in[:, -COND_MAP_CHANNELS:] = torch.randn_like(conv_in[:, -COND_MAP_CHANNELS:])
    video.unet.set_attn_processor(image_prior.unet.attn_processors)
    prompts = ["a red cube moving left", "a blue sphere bouncing"]
    x, t, _, cams = _inputs(video)
    cond = video.encode_text(prompts).cond.repeat_interleave(F, 0)
    plain = image_prior.encode_text(prompts).cond.repeat_interleave(F, 0)
    same_as_image_prior(video.predict(x, t, cond, cams), image_prior.predict(x, t, plain))
    # a trained map: the motion (same text tokens) and the frame's time now change the output through it alone
    with torch.no_grad():
        cond_map.linear_2.weight.normal_(0, 0.5)
    right = video.encode_text(["a red cube moving right", "a blue sphere bouncing"]).cond.repeat_interleave(F, 0)
    swapped = cond.clone()
    swapped[:, -1] = right[:, -1]
    assert (video.predict(x, t, swapped, cams) - video.predict(x, t, cond, cams)).abs().max() > 1e-4
    labels = video.view_settings.class_labels(cond, cams, "cpu", torch.float32)
    maps = cond_map(labels, R, R)
    assert maps.shape == (x.shape[0], COND_MAP_CHANNELS, R, R) and (maps[0] - maps[F - 1]).abs().max() > 1e-4
    x_in = video.view_settings.unet_input(x, cams, torch.float32, labels, video.unet)
    assert torch.equal(x_in[:, -COND_MAP_CHANNELS:], maps)
    with pytest.raises(ValueError, match="pass the class labels"):
        video.view_settings.unet_input(x, cams, torch.float32)
    # a folder without its map network, or with one of another width, is refused in one line
    (folder / COND_MAP_FILE).unlink()
    with pytest.raises(DreamkitError, match="needs cond_map/model.safetensors"):
        PixelDiffusionPrior(str(folder), warn_outside_world=False)
    from safetensors.torch import save_file

    save_file({k: v[..., :3].contiguous() if v.dim() == 2 else v for k, v in cond_map.state_dict().items()},
              str(folder / COND_MAP_FILE))
    with pytest.raises(DreamkitError, match="do not fit"):
        PixelDiffusionPrior(str(folder), warn_outside_world=False)


def test_vsd_trainable_copy_of_a_cond_map_video_prior_keeps_the_map(image_prior, tmp_path):
    """VSD's φ (a LoRA copy of the UNet) on a cond-map video prior (tiny-video's layout): the copy carries its own
    copy of the map network, so φ at init is the prior exactly, clip for clip; φ's trainable tensors are the LoRA and
    camera adapters only (the map stays frozen), and a change of the prior's map after the copy does not reach φ."""
    from dreamkit.guidance.phi import TrainableCopy, camera_features
    from dreamkit.priors.multiview import COND_MAP_CHANNELS, CondMap

    video = _video_from(image_prior, tmp_path / "video", frame_input="cond_map",
                        class_condition="pooled_text+time+motion")
    prior_map = getattr(video.unet, CondMap.ATTRIBUTE)
    with torch.no_grad():  # a trained map whose channels conv_in reads: it moves the output
        prior_map.linear_2.weight.normal_(0, 0.5)
        conv_in = video.unet.conv_in.weight
        conv_in[:, -COND_MAP_CHANNELS:] = torch.randn_like(conv_in[:, -COND_MAP_CHANNELS:])
    phi = TrainableCopy(video, rank=2)
    x, t, _, cams = _inputs(video)
    cond = video.encode_text(["a red cube moving left", "a blue sphere bouncing"]).cond.repeat_interleave(F, 0)
    with torch.no_grad():
        eps = video.predict(x, t, cond, cams)
        eps_phi = phi.predict(x, t, cond, cams, camera_features(None, x.shape[0], "cpu"))
    torch.testing.assert_close(eps_phi, eps, rtol=0, atol=1e-5)
    phi_map = getattr(phi.network, CondMap.ATTRIBUTE)
    assert phi_map is not prior_map and not any(p.requires_grad for p in phi_map.parameters())
    assert phi.adapters and all("lora_" in n or "cond_proj" in n for n in phi.adapters)
    with torch.no_grad():
        prior_map.linear_2.weight.zero_()
        changed = video.predict(x, t, cond, cams)
        still = phi.predict(x, t, cond, cams, camera_features(None, x.shape[0], "cpu"))
    assert (changed - eps).abs().max() > 1e-4 and torch.equal(still, eps_phi)


def test_time_ramp_features_tell_start_from_end():
    """"harmonics+ramp": the eight harmonics and 2τ − 1 (by hand); τ = 0 and τ = 1 now differ; an unknown time input
    is a clear error."""
    from dreamkit.priors.multiview import TIME_INPUTS

    tau = torch.tensor([0.0, 0.25, 1.0])
    feats = time_features(tau, "harmonics+ramp")
    assert feats.shape == (3, TIME_INPUTS["harmonics+ramp"]) == (3, TIME_DIM + 1)
    assert torch.equal(feats[:, :TIME_DIM], time_features(tau))
    assert torch.allclose(feats[:, -1], torch.tensor([-1.0, -0.5, 1.0]))
    assert (feats[0] - feats[2]).abs().max() == 2.0
    with pytest.raises(ValueError, match="harmonics"):
        time_features(tau, "linear")


def test_grow_time_columns_keeps_what_the_layers_compute():
    """A class-embedding layer and a :class:`CondMap` (with its motion × time products) grown from the harmonics to
    harmonics+ramp compute, on the new features, what they computed on the old ones — whatever the ramp's value."""
    from dreamkit.priors.multiview import grow_time_columns

    text, motions = 6, 3
    torch.manual_seed(0)
    tau = torch.rand(5)
    onehot = torch.nn.functional.one_hot(torch.tensor([0, 2, 1, 1, 0]), motions).float()
    pooled = torch.randn(5, text)
    old_in = torch.cat([pooled, time_features(tau), onehot], 1)
    new_in = torch.cat([pooled, time_features(tau, "harmonics+ramp"), onehot], 1)

    linear = torch.nn.Linear(old_in.shape[1], 4)
    grown = torch.nn.Linear(new_in.shape[1], 4)
    with torch.no_grad():
        grown.weight.copy_(grow_time_columns(linear.weight, text, TIME_DIM, TIME_DIM + 1, motions, cross=False))
        grown.bias.copy_(linear.bias)
    assert torch.allclose(grown(new_in), linear(old_in), atol=1e-6)

    old_map = CondMap(old_in.shape[1], cross=(TIME_DIM, motions))
    torch.nn.init.normal_(old_map.linear_2.weight)
    new_map = CondMap(new_in.shape[1], cross=(TIME_DIM + 1, motions))
    state = dict(old_map.state_dict())
    state["linear_1.weight"] = grow_time_columns(state["linear_1.weight"], text, TIME_DIM, TIME_DIM + 1, motions,
                                                 cross=True)
    new_map.load_state_dict(state)
    assert torch.allclose(new_map(new_in, 8, 8), old_map(old_in, 8, 8), atol=1e-5)
    # the ramp's own columns (alone and in the products) are zero; a wrong layout is refused
    ramp_cols = [text + TIME_DIM] + [text + TIME_DIM + 1 + motions + m * (TIME_DIM + 1) + TIME_DIM
                                     for m in range(motions)]
    assert new_map.linear_1.weight[:, ramp_cols].abs().max() == 0
    with pytest.raises(ValueError, match="columns"):
        grow_time_columns(linear.weight, text + 1, TIME_DIM, TIME_DIM + 1, motions, cross=False)


def test_time_input_is_read_from_the_folder_and_checked(tmp_path):
    """A folder's ``time_input``: "harmonics+ramp" gives class labels with the ramp (2τ − 1 after the harmonics); an
    unknown name, or one that does not fit the UNet's class embedding, is a DreamkitError naming the key."""
    from dreamkit.errors import DreamkitError
    from dreamkit.world.motion import MOTIONS

    folder = build_tiny_random_pixel_prior(tmp_path / "ramp", resolution=R, seed=2, frames=F,
                                           class_condition="pooled_text+time+motion", frame_input="cond_map",
                                           time_input="harmonics+ramp")
    prior = PixelDiffusionPrior(str(folder), warn_outside_world=False)
    assert prior.view_settings.time_input == "harmonics+ramp"
    cams = sample_clip_cameras(1, F, R, tau0=0.0625)
    cond = prior.encode_text(["a red cube moving left"]).cond.repeat_interleave(F, 0)
    labels = prior.view_settings.class_labels(cond, cams, "cpu", torch.float32)
    assert labels.shape == (F, TEXT_DIM + TIME_DIM + 1 + len(MOTIONS))
    assert torch.allclose(labels[:, TEXT_DIM + TIME_DIM], 2 * cams.time.float() - 1)
    index = json.loads((folder / "model_index.json").read_text())
    for bad, match in (("bogus", "time_input 'bogus'"), ("harmonics", "do not fit")):
        (folder / "model_index.json").write_text(json.dumps({**index, "time_input": bad}))
        with pytest.raises(DreamkitError, match=match):
            PixelDiffusionPrior(str(folder), warn_outside_world=False)
