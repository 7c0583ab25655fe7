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
from dreamkit.priors.multiview import TIME_DIM, time_features
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


def _video_from(image_prior, folder: Path, frames: int = F) -> PixelDiffusionPrior:
    """A video prior folder whose UNet starts from ``image_prior``'s weights (the training script's init)."""
    from diffusers import UNet2DConditionModel

    build_tiny_random_pixel_prior(folder, resolution=R, seed=1, frames=frames, class_condition="pooled_text+time")
    unet = UNet2DConditionModel.from_pretrained(folder / "unet")
    init_unet_from(unet, image_prior.unet.state_dict())
    unet.save_pretrained(folder / "unet", safe_serialization=True)
    return PixelDiffusionPrior(str(folder), warn_outside_world=False)


@pytest.fixture(scope="module")
def random_video(tmp_path_factory):
    """A random video prior (its time columns random too)."""
    folder = build_tiny_random_pixel_prior(tmp_path_factory.mktemp("video"), resolution=R, seed=2, frames=F,
                                           class_condition="pooled_text+time")
    return PixelDiffusionPrior(str(folder), warn_outside_world=False)


def _inputs(prior, clips: int = 2, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(clips * F, 3, R, R, generator=gen)
    t = torch.tensor([700, 250][:clips]).repeat_interleave(F)
    text = prior.encode_text(["a red cube bouncing", "a blue sphere moving left"][:clips])
    cond = text.cond.repeat_interleave(F, 0)
    cams = sample_clip_cameras(clips, F, R, tau0=0.03)
    return x, t, cond, cams


def test_video_prior_at_init_is_the_image_prior_per_frame_bitwise(image_prior, tmp_path):
    video = _video_from(image_prior, tmp_path / "video")
    assert video.frames == F and video.views == 1 and video.class_condition == "pooled_text+time"
    weight = video.unet.class_embedding.linear_1.weight
    assert weight.shape[1] == TEXT_DIM + TIME_DIM and bool((weight[:, TEXT_DIM:] == 0).all())
    x, t, cond, cams = _inputs(video)
    per_frame = image_prior.predict(x, t, cond)
    joint = video.predict(x, t, cond, cams)
    # the frames attend to each other: not the image prior yet ...
    assert (joint - per_frame).abs().max() > 1e-4
    # ... and with the joint attention off (the image prior's own processors) it is, to the bit
    video.unet.set_attn_processor(image_prior.unet.attn_processors)
    assert torch.equal(video.predict(x, t, cond, cams), per_frame)
    # F = 1: no joint attention is installed, and the zero time columns leave the image prior, bitwise
    single = _video_from(image_prior, tmp_path / "single", frames=1)
    assert single.frames == 1 and "frames" not in json.loads((tmp_path / "single" / "model_index.json").read_text())
    assert torch.equal(single.predict(x, t, cond, cams), per_frame)


def _permuted(prior, x, t, cond, cams, order):
    """The prior's output for clips whose frames are shown in ``order`` (each frame's time stays with its slot)."""
    idx = torch.cat([c * F + order for c in range(x.shape[0] // F)])
    return prior.predict(x[idx], t, cond, cams), idx


def test_frame_order_comes_only_from_the_time_embedding(random_video):
    x, t, cond, cams = _inputs(random_video)
    order = torch.tensor([3, 0, 7, 1, 6, 2, 5, 4])
    base = random_video.predict(x, t, cond, cams)
    shuffled, idx = _permuted(random_video, x, t, cond, cams, order)
    assert (shuffled - base[idx]).abs().max() > 1e-3  # time on: a shuffled clip is not the clip shuffled
    weight = random_video.unet.class_embedding.linear_1.weight
    saved = weight[:, TEXT_DIM:].clone()
    try:
        with torch.no_grad():
            weight[:, TEXT_DIM:] = 0
        base = random_video.predict(x, t, cond, cams)
        shuffled, idx = _permuted(random_video, x, t, cond, cams, order)
        assert torch.allclose(shuffled, base[idx], atol=1e-5)  # time zeroed: equivariant to frame permutations
        assert (base[:F] - base[F:]).abs().max() > 1e-3  # (and not because everything is the same)
    finally:
        with torch.no_grad():
            weight[:, TEXT_DIM:] = saved


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


def test_time_features_by_hand():
    tau = torch.tensor([0.0, 0.125, 0.3])
    k = torch.arange(1, 5, dtype=torch.float32)
    expected = torch.cat([torch.sin(2 * torch.pi * tau[:, None] * k), torch.cos(2 * torch.pi * tau[:, None] * k)], 1)
    assert torch.allclose(time_features(tau), expected, atol=1e-6)
    assert time_features(tau).shape == (3, TIME_DIM)


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


# ---------------------------------------------------------------------------------------------- shipped prior
SHIPPED = ROOT / "assets" / "priors" / "tiny-video"


@pytest.mark.skipif(not SHIPPED.is_dir(), reason="assets/priors/tiny-video is not shipped in this checkout")
def test_shipped_tiny_video_folder():
    size = sum(f.stat().st_size for f in SHIPPED.rglob("*") if f.is_file())
    assert size <= 30 * 2 ** 20
    assert not list(SHIPPED.rglob("*.bin")) and not list(SHIPPED.rglob("*.pt"))  # safetensors only
    prior = PixelDiffusionPrior("tiny-video", warn_outside_world=False)
    assert prior.frames == 8 and prior.class_condition == "pooled_text+time" and prior.resolution == 32
    # trained: the time columns left zero
    assert prior.unet.class_embedding.linear_1.weight[:, TEXT_DIM:].abs().max() > 1e-3
