"""Pixel-space (DeepFloyd-IF-style) priors, DDIM sampling and `dreamkit sample`."""
import warnings

import pytest
import torch

from dreamkit.callbacks import psnr_db
from dreamkit.cli import main
from dreamkit.priors.oracle import OraclePrior
from dreamkit.priors.pixel import PixelDiffusionPrior
from dreamkit.priors.sampling import ddim_sample, sample_cameras


def test_ddim_with_the_exact_oracle_score_recovers_the_target():
    prior = OraclePrior(resolution=32)
    cams = sample_cameras(4, 32)
    images = ddim_sample(prior, ["a house"] * 4, steps=25, guidance_scale=1.0, cameras=cams,
                         generator=torch.Generator().manual_seed(0))
    target = prior.target_images(cams, 0)
    assert psnr_db(images.permute(0, 2, 3, 1), target.permute(0, 2, 3, 1)) > 30


def test_pixel_prior_loading_text_and_prediction(tiny_pixel_dir):
    prior = PixelDiffusionPrior(str(tiny_pixel_dir))
    assert prior.resolution == 16 and prior.channels == 3 and not prior.latent and prior.views == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        text = prior.encode_text(["a red cube"])  # in-world: no warning
    assert text.cond.shape == (1, 17, 384) and text.uncond.shape == (1, 17, 384)
    # token 0 is the mean of the real (unmasked) token embeddings
    tokens = text.cond[0, 1:]
    real = tokens.abs().sum(-1) > 0
    torch.testing.assert_close(text.cond[0, 0], tokens[real].mean(0))
    x = torch.randn(2, 3, 16, 16)
    t = torch.tensor([10, 900])
    eps = prior.predict(x, t, text.cond.expand(2, -1, -1))
    assert eps.shape == (2, 3, 16, 16) and torch.isfinite(eps).all()
    manual = prior.unet(x, t, encoder_hidden_states=text.cond.expand(2, -1, -1),
                        class_labels=text.cond[:, 0].expand(2, -1)).sample
    torch.testing.assert_close(eps, manual)
    with pytest.warns(UserWarning, match="outside the tiny world") as record:
        prior.encode_text(["a purple dragon"])
    # the prompts it suggests are ones this prior was trained on (it may know only a subset of the world)
    named = str(record[0].message).split("nearest in-world prompts: ")[1].split(", ")
    known = {c.lower() for c in prior.world_captions}
    assert named and all(n.lower() in known for n in named), (named, sorted(known)[:5])


def test_pixel_prior_channels_last_changes_the_layout_not_the_numbers(tiny_pixel_dir):
    """prior.channels_last (the default) stores the UNet in NHWC; the standard layout predicts the same."""
    nhwc, plain = PixelDiffusionPrior(str(tiny_pixel_dir)), PixelDiffusionPrior(str(tiny_pixel_dir), channels_last=False)
    conv = next(m for m in nhwc.unet.modules() if isinstance(m, torch.nn.Conv2d) and m.weight.shape[-1] > 1)
    conv_plain = next(m for m in plain.unet.modules() if isinstance(m, torch.nn.Conv2d) and m.weight.shape[-1] > 1)
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert not conv_plain.weight.is_contiguous(memory_format=torch.channels_last)
    x = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([10, 500, 900])
    cond = nhwc.encode_text(["a red cube", "a blue sphere", "a green torus"]).cond
    torch.testing.assert_close(nhwc.predict(x, t, cond), plain.predict(x, t, cond), atol=1e-5, rtol=1e-4)


def test_pixel_prior_v_prediction(tmp_path):
    from dreamkit.priors.tiny_pixel import build_tiny_random_pixel_prior

    prior = PixelDiffusionPrior(str(build_tiny_random_pixel_prior(tmp_path / "v", prediction_type="v_prediction")))
    text = prior.encode_text(["a cube"])
    x = torch.randn(1, 3, 16, 16)
    t = torch.tensor([500])
    v = prior.unet(x, t, encoder_hidden_states=text.cond, class_labels=text.cond[:, 0]).sample
    abar = prior.alphas_cumprod[500]
    torch.testing.assert_close(prior.predict(x, t, text.cond), abar.sqrt() * v + (1 - abar).sqrt() * x)


def test_sample_command_writes_grid(tiny_pixel_dir, tmp_path):
    import imageio.v3 as iio

    out = tmp_path / "grid.png"
    assert main(["sample", "a red cube", "a blue cube", "--prior", str(tiny_pixel_dir), "--views", "3",
                 "--steps", "3", "--output", str(out)]) == 0
    assert iio.imread(out).shape == (2 * 16, 3 * 16, 3)
    assert main(["sample", "a house", "--prior", "oracle", "--views", "4", "--steps", "3",
                 "--output", str(tmp_path / "o.png")]) == 0
    assert main(["sample", "a red cube", "--prior", "no-such-prior"]) == 2


def test_sample_uses_the_priors_own_guidance_scale(tiny_pixel_dir, tmp_path, capsys, monkeypatch):
    """model_index.json's 'sample_guidance_scale' is the default of --guidance; a given --guidance wins."""
    import json
    import shutil

    import dreamkit.priors.sampling as sampling

    folder = tmp_path / "prior"
    shutil.copytree(tiny_pixel_dir, folder)
    assert PixelDiffusionPrior(str(folder)).sample_guidance_scale == 7.5  # no key: Stable Diffusion's default
    index = json.loads((folder / "model_index.json").read_text())
    (folder / "model_index.json").write_text(json.dumps(index | {"sample_guidance_scale": 3.0}))
    assert PixelDiffusionPrior(str(folder)).sample_guidance_scale == 3.0
    used = []
    real = sampling.ddim_sample
    monkeypatch.setattr(sampling, "ddim_sample", lambda *a, **k: used.append(k["guidance_scale"]) or real(*a, **k))
    assert main(["sample", "a red cube", "--prior", str(folder), "--steps", "2", "--output", str(tmp_path / "a.png")]) == 0
    assert main(["sample", "a red cube", "--prior", str(folder), "--steps", "2", "--guidance", "5",
                 "--output", str(tmp_path / "b.png")]) == 0
    assert used == [3.0, 5.0]
    out = capsys.readouterr().out
    assert "guidance 3" in out and "guidance 5" in out


def test_fit_through_the_pixel_prior(tiny_pixel_dir, tmp_path):
    code = main(["fit", "--config", "gs_sds32.yaml", "prior.type=pixel", f"prior.name={tiny_pixel_dir}",
                 f"output_dir={tmp_path}", "trainer.max_steps=2", "representation.num_points=300",
                 "camera.batch_size=2", "trainer.progress=false", "export.turntable=false"])
    assert code == 0


def test_multiview_prior_attends_across_views_and_sees_cameras(tmp_path):
    from dreamkit.priors.tiny_pixel import build_tiny_random_pixel_prior

    prior = PixelDiffusionPrior(str(build_tiny_random_pixel_prior(tmp_path / "mv", views=4)))
    assert prior.views == 4 and prior.class_condition == "camera"
    cams = sample_cameras(4, 16)
    text = prior.encode_text(["a red cube"] * 4)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(4, 3, 16, 16, generator=gen)
    t = torch.full((4,), 500)
    base = prior.predict(x, t, text.cond, cams)
    # changing view 3 changes the prediction for view 0 (joint denoising) ...
    x2 = x.clone()
    x2[3] = torch.randn(3, 16, 16, generator=gen)
    assert (prior.predict(x2, t, text.cond, cams)[0] - base[0]).abs().max() > 1e-4
    # ... a batch of two scenes does not mix them
    both = prior.predict(torch.cat([x, x2]), torch.cat([t, t]), torch.cat([text.cond, text.cond]),
                         type(cams).cat([cams, cams]))
    torch.testing.assert_close(both[:4], base, atol=1e-5, rtol=1e-4)
    # the camera embedding matters
    other = sample_cameras(4, 16, elevation=60.0)
    assert (prior.predict(x, t, text.cond, other) - base).abs().max() > 1e-4
    with pytest.raises(ValueError, match="groups of 4"):
        prior.predict(x[:3], t[:3], text.cond[:3], cams[:3])


def test_sample_scoring_against_ground_truth(tmp_path, capsys):
    """An oracle whose target is a world scene samples its ground truth, which the scorer must accept; a prompt
    naming another colour must be judged wrong."""
    from dreamkit.world import single_scene

    mesh = single_scene("torus", "purple").export(tmp_path / "torus.ply")
    cfg = tmp_path / "oracle_torus.yaml"
    cfg.write_text(f"""name: t
prompt: a purple torus
prior:
  type: oracle
  targets:
    - {{mesh: {mesh}, label: a purple torus}}
    - {{mesh: {mesh}, label: a green torus}}
""")
    assert main(["sample", "a purple torus", "--config", str(cfg), "--views", "2", "--steps", "10", "--guidance", "1",
                 "--score", "--output", str(tmp_path / "s.png")]) == 0
    assert "2/2" in capsys.readouterr().out
    assert main(["sample", "a green torus", "--config", str(cfg), "--views", "1", "--steps", "10", "--guidance", "1",
                 "--score", "--output", str(tmp_path / "g.png")]) == 0
    assert "0/1" in capsys.readouterr().out  # the oracle's "green torus" target is purple: judged wrong
