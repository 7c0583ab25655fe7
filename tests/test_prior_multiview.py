"""Multi-view priors: the class-embedding inputs, and an MVDream-style latent (Stable Diffusion) folder."""
import json
from pathlib import Path

import pytest
import torch

from dreamkit.errors import DreamkitError
from dreamkit.priors.pixel import PixelDiffusionPrior
from dreamkit.priors.sampling import sample_cameras


def _mixes_views_and_cameras(prior, x, text_cond, cams, other_cams):
    t = torch.full((x.shape[0],), 500)
    base = prior.predict(x, t, text_cond, cams)
    x2 = x.clone()
    x2[3] = torch.randn_like(x2[3])
    mixed = (prior.predict(x2, t, text_cond, cams)[0] - base[0]).abs().max()
    camera = (prior.predict(x, t, text_cond, other_cams) - base).abs().max()
    return base, float(mixed), float(camera)


def test_pooled_text_plus_camera_feeds_both(tmp_path):
    from dreamkit.priors.tiny_pixel import build_tiny_random_pixel_prior

    folder = build_tiny_random_pixel_prior(tmp_path / "mv", views=4, class_condition="pooled_text+camera")
    prior = PixelDiffusionPrior(str(folder), warn_outside_world=False)
    assert prior.views == 4 and prior.class_condition == "pooled_text+camera"
    assert prior.unet.config.projection_class_embeddings_input_dim == 384 + 16
    cams = sample_cameras(4, 16)
    red, blue = prior.encode_text(["a red cube"] * 4), prior.encode_text(["a blue cube"] * 4)
    x = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    base, mixed, camera = _mixes_views_and_cameras(prior, x, red.cond, cams, sample_cameras(4, 16, elevation=60.0))
    assert mixed > 1e-4 and camera > 1e-4
    # the pooled text goes through the class embedding: zeroing the class embedding's text columns changes the output
    t = torch.full((4,), 500)
    with torch.no_grad():
        prior.unet.class_embedding.linear_1.weight[:, :384] = 0
    assert (prior.predict(x, t, red.cond, cams) - base).abs().max() > 1e-5
    assert (prior.predict(x, t, blue.cond, cams) - prior.predict(x, t, red.cond, cams)).abs().max() > 1e-5


def test_unknown_class_condition_is_a_clear_error(tmp_path):
    from dreamkit.priors.tiny_pixel import build_tiny_random_pixel_prior

    folder = build_tiny_random_pixel_prior(tmp_path / "p")
    index = json.loads((folder / "model_index.json").read_text())
    index["class_condition"] = "pooled-text"
    (folder / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(DreamkitError, match="class_condition 'pooled-text'.*expected one of"):
        PixelDiffusionPrior(str(folder))


@pytest.fixture(scope="module")
def tiny_mvdream_dir(tmp_path_factory):
    """A tiny random SD folder turned into the MVDream layout: a 16-d camera class embedding and views = 4."""
    from diffusers import UNet2DConditionModel

    from dreamkit.priors.tiny_random import build_tiny_sd

    folder = build_tiny_sd(tmp_path_factory.mktemp("tiny_mvdream"))
    config = dict(UNet2DConditionModel.load_config(folder / "unet"))
    config.update(class_embed_type="projection", projection_class_embeddings_input_dim=16)
    torch.manual_seed(0)
    UNet2DConditionModel.from_config(config).save_pretrained(folder / "unet")
    index = json.loads((folder / "model_index.json").read_text())
    index.update(views=4, class_condition="camera", camera_convention="opengl")
    (folder / "model_index.json").write_text(json.dumps(index))
    return folder


def test_stable_diffusion_folder_with_views_is_multiview(tiny_mvdream_dir):
    from dreamkit.priors.diffusers_sd import StableDiffusionPrior

    prior = StableDiffusionPrior(str(tiny_mvdream_dir))
    assert prior.views == 4
    h = prior.resolution // prior.vae_scale_factor
    x = torch.randn(4, 4, h, h, generator=torch.Generator().manual_seed(1))
    text = prior.encode_text(["a red cube"] * 4)
    cams = sample_cameras(4, prior.resolution)
    _, mixed, camera = _mixes_views_and_cameras(prior, x, text.cond, cams,
                                                sample_cameras(4, prior.resolution, elevation=60.0))
    assert mixed > 1e-5 and camera > 1e-5
    with pytest.raises(ValueError, match="groups of 4"):
        prior.predict(x[:2], torch.full((2,), 10), text.cond[:2], cams[:2])


def test_opengl_convention_flips_camera_axes():
    from dreamkit.priors.multiview import camera_features

    cams = sample_cameras(2, 16)
    cv, gl = camera_features(cams, "opencv").view(-1, 4, 4), camera_features(cams, "opengl").view(-1, 4, 4)
    torch.testing.assert_close(gl[:, :3, 0], cv[:, :3, 0])
    torch.testing.assert_close(gl[:, :3, 1:3], -cv[:, :3, 1:3])
    torch.testing.assert_close(gl[:, :3, 3], cv[:, :3, 3])


def test_fit_through_a_multiview_prior_needs_grouped_cameras(tmp_path):
    from dreamkit.cli import main
    from dreamkit.priors.tiny_pixel import build_tiny_random_pixel_prior

    folder = build_tiny_random_pixel_prior(tmp_path / "mv", views=4, class_condition="pooled_text+camera",
                                           world_captions=["a snowman"])
    common = ["fit", "--config", "gs_sds_mv.yaml", f"prior.name={folder}", f"output_dir={tmp_path / 'out'}",
              "trainer.max_steps=2", "representation.num_points=300", "trainer.progress=false",
              "export.turntable=false", "export.formats=[ply]"]
    assert main(common) == 0
    # a single-view camera batch for a 4-view prior is refused before anything is written
    assert main(common[:-4] + ["camera.views=1", "trainer.progress=false"]) == 2
    assert len(list((tmp_path / "out").rglob("config.yaml"))) == 1


def test_plucker_rays_match_the_volume_renderers_rays():
    """The ray map against the NeRF renderer's ray generation (which works from the intrinsics matrix K)."""
    from dreamkit.priors.multiview import plucker_rays
    from dreamkit.render.volume import generate_rays

    cams = sample_cameras(4, 12, elevation=25.0)
    rays = plucker_rays(cams.c2w, cams.fovy, 12, 12)
    assert rays.shape == (4, 6, 12, 12)
    ref = generate_rays(cams)
    d_ref = ref.directions.reshape(4, 12, 12, 3)
    o_ref = torch.nn.functional.normalize(ref.origins, dim=-1).reshape(4, 12, 12, 3)
    assert torch.allclose(rays[:, :3].permute(0, 2, 3, 1), d_ref, atol=1e-5)
    assert torch.allclose(rays[:, 3:].permute(0, 2, 3, 1), torch.linalg.cross(o_ref, d_ref, dim=-1), atol=1e-5)
    # the same camera at another distance gives the same map (it says where the camera looks from, not how far)
    far = cams.c2w.clone()
    far[:, :3, 3] *= 1.7
    assert torch.allclose(plucker_rays(far, cams.fovy, 12, 12), rays, atol=1e-5)


def test_metric_plucker_moments_are_each_rays_distance_from_the_origin():
    """camera_input plucker_metric: the moment's norm is the distance at which the pixel's ray passes the world
    origin (computed here as the foot of the perpendicular from the renderer's rays), so it changes with the camera
    distance and field of view — the apparent size a camera-aware prior needs."""
    from dreamkit.priors.multiview import plucker_rays
    from dreamkit.render.volume import generate_rays

    cams = sample_cameras(3, 10, elevation=30.0, distance=2.6, fovy=38.0)
    rays = plucker_rays(cams.c2w, cams.fovy, 10, 10, metric=True)
    ref = generate_rays(cams)
    o, d = ref.origins.reshape(-1, 3), ref.directions.reshape(-1, 3)
    closest = o - (o * d).sum(-1, keepdim=True) * d  # the point of each ray nearest the origin
    assert rays.shape == (3, 7, 10, 10)
    moment_norm = rays[:, 3:6].permute(0, 2, 3, 1).reshape(-1, 3).norm(dim=-1)
    assert torch.allclose(moment_norm, closest.norm(dim=-1), atol=1e-5)
    assert torch.allclose(rays[:, 6].flatten(), closest.norm(dim=-1), atol=1e-5)  # the norm as its own channel
    assert torch.allclose(rays[:, :3], plucker_rays(cams.c2w, cams.fovy, 10, 10)[:, :3])
    far = cams.c2w.clone()
    far[:, :3, 3] *= 1.5
    assert torch.allclose(plucker_rays(far, cams.fovy, 10, 10, metric=True)[:, 3:], 1.5 * rays[:, 3:], atol=1e-5)


def test_camera_ray_map_reaches_the_unet(tmp_path):
    from dreamkit.priors.tiny_pixel import build_tiny_random_pixel_prior

    folder = build_tiny_random_pixel_prior(tmp_path / "mv", views=4, class_condition="pooled_text",
                                           camera_input="plucker")
    prior = PixelDiffusionPrior(str(folder), warn_outside_world=False)
    assert prior.view_settings.camera_input == "plucker" and prior.unet.config.in_channels == 9
    cond = prior.encode_text(["a red cube"] * 4).cond
    x = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    t = torch.full((4,), 500)
    a, b = sample_cameras(4, 16), sample_cameras(4, 16, elevation=60.0)
    # the class embedding gets only the text here, so the cameras reach the UNet through the ray map alone
    assert (prior.predict(x, t, cond, a) - prior.predict(x, t, cond, b)).abs().max() > 1e-4
    with torch.no_grad():
        prior.unet.conv_in.weight[:, 3:] = 0
    assert torch.allclose(prior.predict(x, t, cond, a), prior.predict(x, t, cond, b), atol=1e-6)
    with pytest.raises(ValueError, match="one camera each"):
        prior.predict(x, t, cond)


def test_camera_input_needs_matching_unet_channels(tmp_path):
    from dreamkit.priors.tiny_pixel import build_tiny_random_pixel_prior

    folder = build_tiny_random_pixel_prior(tmp_path / "p", views=4)
    index = json.loads((folder / "model_index.json").read_text())
    index["camera_input"] = "plucker"
    (folder / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(DreamkitError, match="camera_input 'plucker' needs a UNet with 6 more input"):
        PixelDiffusionPrior(str(folder))
    index["camera_input"] = "rays"
    (folder / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(DreamkitError, match="camera_input 'rays' is not supported"):
        PixelDiffusionPrior(str(folder))


def test_training_tensors_and_cameras_give_the_same_unet_inputs(tmp_path):
    """scripts/train_tiny_prior.py holds cameras as (c2w, fovy) tensors, the adapters as Cameras: both go through
    ViewSettings, and must give the UNet the same class-embedding and conv_in inputs."""
    from dreamkit.priors.tiny_pixel import build_tiny_random_pixel_prior

    folder = build_tiny_random_pixel_prior(tmp_path / "mv", views=4, class_condition="pooled_text+camera",
                                           camera_input="plucker")
    vs = PixelDiffusionPrior(str(folder), warn_outside_world=False).view_settings
    cams = sample_cameras(4, 16)
    pair = (cams.c2w.clone(), cams.fovy.clone())
    cond = torch.randn(4, 5, 384)
    x = torch.randn(4, 3, 16, 16)
    labels = vs.class_labels(cond, cams, "cpu", torch.float32)
    assert torch.equal(labels, vs.class_labels(cond, pair, "cpu", torch.float32))
    # [pooled text | camera]: token 0, then the c2w with its rotation unchanged and its translation of unit length
    assert torch.equal(labels[:, :384], cond[:, 0])
    c2w = labels[:, 384:].reshape(4, 4, 4)
    assert torch.allclose(c2w[:, :3, :3], cams.c2w[:, :3, :3])
    assert torch.allclose(c2w[:, :3, 3].norm(dim=-1), torch.ones(4))
    x_in = vs.unet_input(x, cams, torch.float32)
    assert torch.equal(x_in, vs.unet_input(x, pair, torch.float32))
    assert torch.equal(x_in[:, :3], x)
    d, m = x_in[:, 3:6], x_in[:, 6:9]  # Plücker: unit directions, moments orthogonal to them
    assert torch.allclose(d.norm(dim=1), torch.ones(4, 16, 16), atol=1e-5)
    assert (d * m).sum(1).abs().max() < 1e-5
    with pytest.raises(ValueError, match="one camera per image"):
        vs.class_labels(cond, None, "cpu", torch.float32)


SHIPPED = Path(__file__).resolve().parents[1] / "assets" / "priors"


@pytest.mark.parametrize("name,size", [("tiny-t2i-cam", 32), ("tiny-t2i-cam64", 64)])
def test_shipped_tiny_t2i_cam_uses_its_camera(name, size):
    """The shipped camera-aware tiny-t2i priors (32², and 64² for gs_sds.yaml): safetensors only, a 7-channel metric
    ray map after the image, and trained to use it — its ray weights moved from zero and the same noisy image at
    another elevation gets another prediction."""
    folder = SHIPPED / name
    if not folder.is_dir():
        pytest.skip(f"assets/priors/{name} is not shipped in this checkout")
    assert sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) <= 30 * 2 ** 20
    assert not list(folder.rglob("*.bin")) and not list(folder.rglob("*.pt"))
    prior = PixelDiffusionPrior(name, warn_outside_world=False)
    assert prior.view_settings.camera_input == "plucker_metric" and prior.unet.config.in_channels == 3 + 7
    assert prior.frames == 1 and prior.resolution == size
    assert prior.unet.conv_in.weight[:, 3:].abs().max() > 1e-3
    cond = prior.encode_text(["a red cube"] * 2).cond
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    t = torch.full((2,), 900)
    a, b = sample_cameras(2, size), sample_cameras(2, size, elevation=40.0)
    assert (prior.predict(x, t, cond, a) - prior.predict(x, t, cond, b)).abs().max() > 1e-3
