"""End to end: `dreamkit fit` with the oracle prior (improvement, exports, resume after SIGKILL) and the diffusers path."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from dreamkit.checkpoint import load_checkpoint
from dreamkit.cli import main
from dreamkit.run import checkpoint_step, run_folders

FAST = ["trainer.progress=false", "export.turntable_frames=8", "export.turntable_resolution=32"]


@pytest.fixture(scope="module")
def oracle_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("oracle")
    code = main(["fit", "--config", "gs_oracle.yaml", f"output_dir={out}", "trainer.max_steps=150",
                 "trainer.checkpoint_every=50", "trainer.val_every=75", *FAST])
    assert code == 0
    (run,) = run_folders(out)
    return run


def test_short_oracle_fit_improves_clearly(oracle_run, tmp_path):
    from dreamkit.callbacks import psnr_db
    from dreamkit.run import held_out_renders
    from dreamkit.system import build_representation

    cfg, _, cams, images, targets = held_out_renders(oracle_run)
    initial = build_representation(cfg, torch.Generator().manual_seed(int(cfg.seed)))
    with torch.no_grad():
        psnr0 = psnr_db(initial.render(cams, background=torch.ones(len(cams), 3)).rgb.clamp(0, 1), targets)
    psnr1 = psnr_db(images, targets)
    assert psnr1 > psnr0 + 4.0, (psnr0, psnr1)


def test_run_folder_contents(oracle_run):
    for rel in ("config.yaml", "ckpts/last.ckpt", "logs/metrics.csv", "renders/step_000150.png",
                "exports/gaussians.ply", "exports/turntable.mp4", "exports/turntable.png"):
        assert (oracle_run / rel).is_file(), rel
    assert list((oracle_run / "tb").glob("events.out.tfevents.*"))
    assert "train/loss_sds" in (oracle_run / "logs" / "metrics.csv").read_text().splitlines()[0]


def test_ply_export_read_by_plyfile(oracle_run, tmp_path):
    from plyfile import PlyData

    from dreamkit.run import load_run
    from dreamkit.system import load_representation_from_checkpoint

    assert main(["export", str(oracle_run), "--format", "ply", "--output", str(tmp_path)]) == 0
    ply = PlyData.read(str(tmp_path / "gaussians.ply"))
    v = ply["vertex"]
    names = [p.name for p in v.properties]
    assert names[:9] == ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
    assert names[-8:] == ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    _, cfg, ckpt = load_run(oracle_run)
    model = load_representation_from_checkpoint(cfg, ckpt, torch.device("cpu"))
    assert len(v.data) == model.num_gaussians
    np.testing.assert_allclose(np.stack([v["x"], v["y"], v["z"]], 1), model.means.detach().numpy(), atol=1e-6)
    np.testing.assert_allclose(v["opacity"], model.params["opacity_logits"].detach().numpy(), atol=1e-6)
    np.testing.assert_allclose(v["f_dc_1"], model.params["sh0"][:, 0, 1].detach().numpy(), atol=1e-6)
    # a second export never overwrites the first
    assert main(["export", str(oracle_run), "--format", "ply", "--output", str(tmp_path)]) == 0
    assert (tmp_path / "gaussians-1.ply").is_file()


def test_render_writes_turntable(oracle_run, tmp_path):
    import imageio.v3 as iio

    out = tmp_path / "orbit.mp4"
    assert main(["render", str(oracle_run), "--frames", "6", "--resolution", "32", "--output", str(out)]) == 0
    frames = iio.imread(out)
    assert frames.shape[0] == 6 and frames.shape[-1] == 3
    assert frames.std() > 1  # not a blank video


def test_kill_and_resume_matches_uninterrupted(tmp_path):
    """SIGKILL a run after a checkpoint, resume it, and compare its final parameters with an uninterrupted run."""
    steps = ["trainer.max_steps=60", "trainer.checkpoint_every=10", "trainer.val_every=0",
             "representation.densify.refine_start=20", "representation.densify.refine_every=20",
             "export.formats=[]", "export.turntable=false", "trainer.progress=false"]
    ref_root, kill_root = tmp_path / "ref", tmp_path / "killed"
    assert main(["fit", "--config", "gs_oracle.yaml", f"output_dir={ref_root}", *steps]) == 0
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "dreamkit", "fit", "--config", "gs_oracle.yaml",
                             f"output_dir={kill_root}", *steps], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    killed_at = -1
    deadline = time.time() + 240
    while proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
        runs = run_folders(kill_root)
        if runs and checkpoint_step(runs[0]) >= 30:
            os.killpg(proc.pid, signal.SIGKILL)
            killed_at = checkpoint_step(runs[0])
            break
    proc.wait()
    assert 30 <= killed_at < 60, f"run was not killed mid-way (checkpoint step {killed_at})"
    (run,) = run_folders(kill_root)
    first_log = (run / "logs" / "metrics.csv").read_text()
    assert main(["fit", f"resume={run}", "trainer.progress=false"]) == 0
    assert checkpoint_step(run) == 60
    # the first part's log is kept; the resumed part logs beside it, starting after the checkpoint step
    assert (run / "logs" / "metrics.csv").read_text() == first_log
    resumed = (run / "logs" / "resume-1" / "metrics.csv").read_text().splitlines()
    header = resumed[0].split(",")
    first_step = int(resumed[1].split(",")[header.index("step")])
    assert first_step >= killed_at
    (ref,) = run_folders(ref_root)
    a = load_checkpoint(ref / "ckpts" / "last.ckpt")["state_dict"]
    b = load_checkpoint(run / "ckpts" / "last.ckpt")["state_dict"]
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].shape == b[key].shape, key
        torch.testing.assert_close(a[key], b[key], atol=1e-5, rtol=1e-4, msg=key)


def test_diffusers_path_runs_a_few_steps(tiny_sd_dir, tmp_path):
    code = main(["fit", "--config", "gs_sds32.yaml", "prior.type=stable-diffusion", f"prior.name={tiny_sd_dir}",
                 f"output_dir={tmp_path}",
                 "trainer.max_steps=3", "representation.num_points=500", "camera.batch_size=2", *FAST])
    assert code == 0
    (run,) = run_folders(tmp_path)
    assert (run / "exports" / "gaussians.ply").is_file()


def test_readme_default_recipe_runs_with_its_shipped_prior(tmp_path):
    """The README's first text-to-3D command, shortened: gs_sds.yaml with the shipped 64² tiny-t2i-cam64 (camera ray
    map), the size prior and the splat cap from step 0, to a GLB whose hull is carved from 64² silhouettes. Its
    quality is measured in benchmarks/2026-12-07/red_cube_default/, not here."""
    code = main(["fit", "--config", "gs_sds.yaml", "prompt=a red cube", f"output_dir={tmp_path}",
                 "trainer.max_steps=4", "representation.num_points=400", "representation.object_radius_start=0",
                 "camera.batch_size=2", "export.mesh_views=12", *FAST])
    assert code == 0
    (run,) = run_folders(tmp_path)
    cfg = OmegaConf.load(run / "config.yaml")
    assert cfg.prior.name == "tiny-t2i-cam64" and cfg.camera.width == 64 and cfg.representation.max_scale > 0
    assert (run / "exports" / "mesh.glb").is_file()
    state = load_checkpoint(run / "ckpts" / "last.ckpt")
    log_scales = [v for k, v in state["state_dict"].items() if k.endswith("log_scales")][0]
    assert log_scales.max().exp() <= cfg.representation.max_scale * (1 + 1e-5)   # the cap held every splat


def test_export_and_render_start_without_lightning(oracle_run, tmp_path):
    """`dreamkit export`/`render` rebuild the representation from the checkpoint without importing PyTorch Lightning
    (several seconds of start-up); only fitting needs it."""
    code = ("import sys; from dreamkit.cli import main; "
            f"assert main(['export', {str(oracle_run)!r}, '--format', 'ply', '--output', {str(tmp_path / 'e')!r}]) == 0; "
            f"assert main(['render', {str(oracle_run)!r}, '--frames', '4', '--resolution', '32', "
            f"'--output', {str(tmp_path / 't.mp4')!r}]) == 0; "
            "print('lightning imported:', 'pytorch_lightning' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "lightning imported: False" in out.stdout
    assert (tmp_path / "e" / "gaussians.ply").is_file() and (tmp_path / "t.mp4").is_file()
