"""scripts/train_tiny_prior.py end to end on a toy budget: writes a loadable prior with a model card, resumes, and
starts the multi-view prior from the text-to-image weights (v-prediction + Min-SNR weighting)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
TOY = ["--resolution", "16", "--channels", "16,32", "--attention-levels", "1", "--images", "64", "--batch", "8",
       "--ckpt-every", "2", "--sample-every", "1000", "--log-every", "1", "--threads", "1",
       "--prediction-type", "v_prediction", "--min-snr-gamma", "5"]


def _train(*args: str) -> str:
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "train_tiny_prior.py"), *TOY, *args],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    return out.stdout


def test_train_resume_and_multiview_init(tmp_path):
    from dreamkit.priors.pixel import PixelDiffusionPrior

    work, out = tmp_path / "work", tmp_path / "t2i"
    log = _train("--work", str(work), "--out", str(out), "--max-steps", "4")
    assert "step 4 " in log
    card = (out / "README.md").read_text()
    assert "produced by: `python scripts/train_tiny_prior.py" in card and "at commit:" in card and "steps: 4" in card
    index = json.loads((out / "model_index.json").read_text())
    assert index["trained_steps"] == 4 and index["world_captions"]
    prior = PixelDiffusionPrior(str(out), warn_outside_world=False)
    assert prior.prediction_type == "v_prediction" and prior.resolution == 16
    x = torch.randn(2, 3, 16, 16)
    assert torch.isfinite(prior.predict(x, torch.tensor([10, 900]), prior.encode_text(["a red cube"] * 2).cond)).all()

    # a second call with the same --work continues from the checkpoint
    log = _train("--work", str(work), "--out", str(out), "--max-steps", "6", "--sample-guidance-scale", "4")
    assert "resumed from step 4" in log and "step 6 " in log
    assert PixelDiffusionPrior(str(out), warn_outside_world=False).sample_guidance_scale == 4.0

    # the multi-view prior starts from the text-to-image weights (new camera columns at zero)
    mv = tmp_path / "mv"
    log = _train("--work", str(tmp_path / "work_mv"), "--out", str(mv), "--max-steps", "2", "--multiview",
                 "--init-from", str(out), "--class-embedding-lr-mult", "10")
    assert f"initialised from {out}" in log
    prior = PixelDiffusionPrior(str(mv), warn_outside_world=False)
    assert prior.views == 4 and prior.class_condition == "pooled_text+camera"
    assert "initialised from" in (mv / "README.md").read_text()

    # with a camera ray map: conv_in gains 6 input channels that start at zero (the image channels keep the
    # text-to-image weights), and batches can be drawn more often from one kind of scene
    ray = tmp_path / "ray"
    log = _train("--work", str(tmp_path / "work_ray"), "--out", str(ray), "--max-steps", "1", "--multiview",
                 "--init-from", str(out), "--camera-input", "plucker", "--kind-sampling", "asymmetric=3",
                 "--lr", "1e-12")
    assert "batch draws by scene kind" in log
    prior = PixelDiffusionPrior(str(ray), warn_outside_world=False)
    assert prior.view_settings.camera_input == "plucker" and prior.unet.config.in_channels == 9
    assert "camera ray map" in (ray / "README.md").read_text()
    source = PixelDiffusionPrior(str(out), warn_outside_world=False).unet.conv_in.weight
    assert torch.allclose(prior.unet.conv_in.weight[:, :3], source, atol=1e-6)
    assert prior.unet.conv_in.weight[:, 3:].abs().max() < 1e-6


def test_video_time_ramp_continues_a_harmonics_prior_exactly(tmp_path):
    """``--time-input harmonics+ramp`` from a harmonics video prior with a map network (``--frame-input cond_map``):
    the class embedding and the map network gain the ramp's columns at zero and the map network is carried over, so
    the new prior's ε̂ equals the source's on clips (to float rounding), and the folder says its time input."""
    from dreamkit.priors.pixel import PixelDiffusionPrior
    from dreamkit.priors.sampling import sample_clip_cameras

    video = ["--video", "--frames", "2", "--images", "8", "--frame-input", "cond_map",
             "--class-condition", "pooled_text+time+motion"]
    src, ramp = tmp_path / "src", tmp_path / "ramp"
    _train(*video, "--work", str(tmp_path / "w_src"), "--out", str(src), "--max-steps", "1")
    log = _train(*video, "--work", str(tmp_path / "w_ramp"), "--out", str(ramp), "--max-steps", "0",
                 "--init-from", str(src), "--time-input", "harmonics+ramp")
    assert "map network initialised from" in log
    a = PixelDiffusionPrior(str(src), warn_outside_world=False)
    b = PixelDiffusionPrior(str(ramp), warn_outside_world=False)
    assert a.view_settings.time_input == "harmonics" and b.view_settings.time_input == "harmonics+ramp"
    assert json.loads((ramp / "model_index.json").read_text())["time_input"] == "harmonics+ramp"
    assert "2τ − 1" in (ramp / "README.md").read_text()
    cams = sample_clip_cameras(2, 2, 16, tau0=0.3)
    x, t = torch.randn(4, 3, 16, 16), torch.tensor([700, 700, 200, 200])
    prompts = ["a red cube moving left", "a blue sphere bouncing"]
    idx = torch.tensor([0, 0, 1, 1])
    ea = a.predict(x, t, a.encode_text(prompts).cond[idx], cameras=cams)
    eb = b.predict(x, t, b.encode_text(prompts).cond[idx], cameras=cams)
    assert (ea - eb).abs().max() <= 1e-5 * ea.abs().max()
    # the map network was trained one step in the source: carried, not restarted (its last layer is non-zero)
    from dreamkit.priors.multiview import CondMap

    assert getattr(b.unet, CondMap.ATTRIBUTE).linear_2.weight.abs().max() > 0
    # a narrower time input than the source's is refused
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "train_tiny_prior.py"), *TOY, *video, "--work",
                          str(tmp_path / "w_back"), "--out", str(tmp_path / "back"), "--max-steps", "0",
                          "--init-from", str(ramp)], capture_output=True, text=True, timeout=300)
    assert out.returncode != 0 and "--time-input" in out.stderr
    assert not (tmp_path / "w_back").exists()  # refused before anything is written


def test_shape_sampling_weights_and_errors(load_script):
    module = load_script("train_tiny_prior")
    scenes = [{"key": "single/red/ring", "kind": "single"}, {"key": "single/blue/cube", "kind": "single"},
              {"key": "asymmetric/house", "kind": "asymmetric"}]
    images = torch.tensor([0, 0, 1, 2, 2])  # each image's scene
    assert module.shape_draw_weights(scenes, images, "ring=4").tolist() == [4.0, 4.0, 1.0, 1.0, 1.0]
    # it multiplies the weights drawn so far (--kind-sampling)
    kinds = torch.tensor([1.0, 1.0, 1.0, 3.0, 3.0])
    assert module.shape_draw_weights(scenes, images, "cube=2", kinds).tolist() == [1.0, 1.0, 2.0, 3.0, 3.0]
    with pytest.raises(SystemExit, match=r"unknown shape\(s\) \['rign'\]; expected cube, ring"):
        module.shape_draw_weights(scenes, images, "rign=4")
