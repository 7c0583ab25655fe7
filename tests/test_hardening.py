"""Hardening: shared run folders never run code, killed fits never report success, bad input never costs a run.

Every case checks the CLI's contract for bad input: one line on stderr, the documented exit code (2 for bad input,
3 for a diverged fit, 128 + signal for an interrupted one), no traceback, and nothing lost (no run folder made for a
refused fit, an existing run left byte for byte as it was).
"""
from __future__ import annotations

import errno
import hashlib
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dreamkit.checkpoint import CheckpointError, load_checkpoint
from dreamkit.cli import main

QUICK = ["camera.width=32", "camera.height=32", "trainer.progress=false", "trainer.val_every=0",
         "trainer.log_every=5"]
REPO = Path(__file__).resolve().parents[1]


def run_cli(capsys, *argv) -> tuple[int, list[str], str]:
    """main(argv) in this process → (exit code, non-empty stderr lines, stdout)."""
    capsys.readouterr()
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, [line for line in err.splitlines() if line.strip()], out


def assert_one_line(lines: list[str], code: int, expected_code: int, *needles: str) -> None:
    assert code == expected_code, (code, lines)
    assert len(lines) == 1, lines
    assert "Traceback" not in lines[0]
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def tree_digest(folder: Path) -> dict[str, str]:
    """Every file (and link) under ``folder`` → sha256 of its bytes (links: their target)."""
    out = {}
    for path in sorted(folder.rglob("*")):
        rel = str(path.relative_to(folder))
        if path.is_symlink():
            out[rel] = "link:" + os.readlink(path)
        elif path.is_file():
            out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            out[rel] = "dir"
    return out


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """A finished 10-step gs_oracle run (32², no exports)."""
    out = tmp_path_factory.mktemp("runs")
    assert main(["fit", "--no-export", "--config", "gs_oracle.yaml", "trainer.max_steps=10", f"output_dir={out}",
                 *QUICK]) == 0
    (run,) = [p for p in (out / "gs_oracle").iterdir() if not p.is_symlink()]
    return run


@pytest.fixture
def run_copy(finished_run, tmp_path) -> Path:
    dest = tmp_path / "gs_oracle" / finished_run.name
    shutil.copytree(finished_run, dest, symlinks=True)
    return dest


class _Planted:
    """Unpickling this runs a shell command that creates a file (what a hostile checkpoint would do)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def plant(run: Path, marker: Path) -> None:
    ckpt = load_checkpoint(run / "ckpts" / "last.ckpt")
    ckpt["dreamkit"]["evil"] = _Planted(marker)
    torch.save(ckpt, run / "ckpts" / "last.ckpt")


# ----------------------------------------------------------------------------------------------------------------------
# a run folder from someone else never runs code


def test_planted_checkpoint_is_refused_everywhere(run_copy, tmp_path, capsys):
    marker = tmp_path / "PWNED"
    # the planted object does run under an unrestricted unpickler: the test would notice a regression
    plant(run_copy, marker)
    torch.load(run_copy / "ckpts" / "last.ckpt", weights_only=False)
    assert marker.exists()
    marker.unlink()

    before = tree_digest(run_copy)
    eval_dir = tmp_path / "eval"
    eval_dir.mkdir()
    (eval_dir / "results.csv").write_text(f"prompt,run_dir,fit_s\na red cube,{run_copy},1.0\n")
    commands = [
        ["export", run_copy, "--format", "ply"],
        ["render", run_copy, "--frames", "4", "--resolution", "32"],
        ["eval", "--rescore", eval_dir, "--out", tmp_path / "rescored"],
        ["fit", "--config", "mesh_oracle.yaml", f"init_from={run_copy}", f"output_dir={tmp_path / 'new'}", *QUICK],
        ["fit", f"resume={run_copy}", "trainer.max_steps=20"],
    ]
    for argv in commands:
        code, lines, _ = run_cli(capsys, *argv)
        assert_one_line(lines, code, 2, "checkpoint", "last.ckpt")
        assert "refused without running" in lines[0], lines[0]
        assert not marker.exists(), argv
    assert tree_digest(run_copy) == before
    assert not (tmp_path / "new").exists()  # the init_from fit made no run folder


def test_checkpoint_loader_errors_name_the_file(tmp_path):
    empty = tmp_path / "empty.ckpt"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty.ckpt is empty"):
        load_checkpoint(empty)
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(os.urandom(4096))
    with pytest.raises(CheckpointError, match="cannot read checkpoint .*junk.ckpt"):
        load_checkpoint(junk)
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"weights": torch.ones(2)}, foreign)
    with pytest.raises(CheckpointError, match="not a dreamkit checkpoint"):
        load_checkpoint(foreign)


# ----------------------------------------------------------------------------------------------------------------------
# a failed resume changes nothing


def test_resume_of_a_corrupt_checkpoint_leaves_the_run_byte_for_byte(run_copy, capsys):
    ckpt = run_copy / "ckpts" / "last.ckpt"
    data = ckpt.read_bytes()
    ckpt.write_bytes(data[: len(data) // 2])  # truncated, as by a full disk or an interrupted copy
    before = tree_digest(run_copy)
    code, lines, _ = run_cli(capsys, "fit", f"resume={run_copy}", "trainer.max_steps=20")
    assert_one_line(lines, code, 2, "cannot read checkpoint", str(ckpt))
    assert tree_digest(run_copy) == before


def test_resume_of_a_finished_run_says_how_to_train_longer(run_copy, capsys):
    before = tree_digest(run_copy)
    code, lines, _ = run_cli(capsys, "fit", f"resume={run_copy}")
    assert_one_line(lines, code, 2, "already finished (step 10 of 10)", "trainer.max_steps=")
    assert tree_digest(run_copy) == before


# ----------------------------------------------------------------------------------------------------------------------
# signals: a killed fit never reports success, and resumes to the same result


def _fit_cmd(out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "dreamkit", "fit", "--no-export", "--config", "gs_oracle.yaml",
            "trainer.max_steps=60", "trainer.checkpoint_every=0", f"output_dir={out}", *QUICK, *extra]


# the fits of the signal tests run on one thread: their bitwise comparison then checks the resume alone, not how a
# busy 2-core CI machine schedules the intra-op threads (a clean-clone CI run once found all three runs different)
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _final_state(run: Path) -> dict:
    return load_checkpoint(run / "ckpts" / "last.ckpt")["state_dict"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("plain")
    subprocess.run(_fit_cmd(out), check=True, capture_output=True, cwd=REPO, timeout=300, env=ONE_THREAD)
    (run,) = [p for p in (out / "gs_oracle").iterdir() if not p.is_symlink()]
    return _final_state(run)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_mid_fit_checkpoints_exits_nonzero_and_resumes_to_the_same_result(sig, tmp_path, uninterrupted):
    out = tmp_path / "out"
    proc = subprocess.Popen(_fit_cmd(out), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
                            env=ONE_THREAD)
    for line in proc.stdout:  # TextProgress prints every 3 steps of 60
        if line.startswith("step 15/"):
            proc.send_signal(sig)
            break
    stdout_rest, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + sig, (proc.returncode, stderr)
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    (run,) = [p for p in (out / "gs_oracle").iterdir() if not p.is_symlink()]
    assert lines[0].startswith(f"interrupted ({signal.Signals(sig).name}) at step ")
    assert f"resume with dreamkit fit resume={run}" in lines[0]
    step = int(lines[0].split(" at step ")[1].split()[0])
    assert 15 <= step < 60
    assert load_checkpoint(run / "ckpts" / "last.ckpt")["global_step"] == step  # a valid checkpoint of that step

    resumed = subprocess.run([sys.executable, "-m", "dreamkit", "fit", f"resume={run}", "--no-export"],
                             capture_output=True, text=True, cwd=REPO, timeout=300, env=ONE_THREAD)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming from step {step} of 60" in resumed.stdout
    assert f"trained {60 - step} steps (steps {step}–60, resumed)" in resumed.stdout
    final = _final_state(run)
    assert final.keys() == uninterrupted.keys()
    for key, value in uninterrupted.items():
        assert torch.equal(final[key], value), key


# ----------------------------------------------------------------------------------------------------------------------
# bad input: one line, exit 2, no run folder


@pytest.mark.parametrize("overrides, needle", [
    (["seed=-1"], "seed=-1 is negative"),
    (["guidance.min_step_percent=2"], "in [0, 1], got 2"),
    (["guidance.min_step_percent=0.9", "guidance.max_step_percent=0.5"], "is above guidance.max_step_percent"),
    (["representation.num_points=0"], "representation.num_points=0 must be ≥ 1"),
    (["camera.width=100000"], "camera.width=100000 is larger than"),
    (["camera.width=8000", "camera.height=8000", "camera.batch_size=64"], "GiB for a step (estimate)"),
    (["prompt=a\x1b[31mred cube"], "control character"),
    (["prompt=${oc.env:HOME}"], "is an interpolation"),
    (["prompt=\\${oc.env:HOME}"], "is an interpolation"),
    (["trainer.cudnn_benchmark=sometimes"], "use auto, true or false"),
    (["trainer.nonfinite_patience=0"], "trainer.nonfinite_patience must be > 0"),
    (["export.mesh_method=voxels"], "export.mesh_method='voxels': use 'density'"),  # not after the fit
    (["export.mesh_hull_alpha=1.5"], "between 0 and 1"),
    (["export.mesh_hull_resolution=4"], "export.mesh_hull_resolution=4: use a render size"),
    (["representation.max_scale=-0.01"], "representation.max_scale=-0.01"),
])
def test_bad_values_are_one_line_before_any_run_folder(overrides, needle, tmp_path, capsys):
    out = tmp_path / "out"
    code, lines, stdout = run_cli(capsys, "fit", "--config", "gs_oracle.yaml", f"output_dir={out}", *QUICK,
                                  *overrides)
    assert_one_line(lines, code, 2, needle)
    assert not out.exists()
    assert os.environ.get("HOME", "/nonexistent-home") not in lines[0] + stdout  # no value from the environment


def test_interpolation_in_a_recipe_or_a_shared_run_config_is_refused(run_copy, tmp_path, capsys):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("name: x\nprompt: ${oc.env:HOME}\n")
    code, lines, _ = run_cli(capsys, "fit", "--config", recipe, f"output_dir={tmp_path / 'out'}")
    assert_one_line(lines, code, 2, "recipe.yaml", "is an interpolation")
    cfg = run_copy / "config.yaml"
    cfg.write_text(cfg.read_text().replace("prompt: a house", "prompt: ${oc.env:HOME}"))
    code, lines, _ = run_cli(capsys, "export", run_copy, "--format", "ply")
    assert_one_line(lines, code, 2, "config.yaml", "is an interpolation")


def test_saved_config_round_trips_exactly(finished_run):
    from omegaconf import OmegaConf

    from dreamkit.config import load_config, load_yaml

    saved = load_yaml(finished_run / "config.yaml")
    again = load_config(None, [], base=saved)
    assert OmegaConf.to_container(again) == OmegaConf.to_container(saved)


def test_damaged_prior_folders_are_one_line(tmp_path, capsys):
    from dreamkit.assets import asset_path

    folder = tmp_path / "prior"
    shutil.copytree(asset_path("priors/tiny-t2i"), folder)
    (folder / "unet" / "config.json").write_text("{not json")
    out = tmp_path / "out"
    code, lines, _ = run_cli(capsys, "fit", "--config", "gs_sds.yaml", f"prior.name={folder}", f"output_dir={out}",
                             *QUICK)
    assert_one_line(lines, code, 2, "cannot load the prior", "not a valid JSON")
    shutil.copy(asset_path("priors/tiny-t2i") / "unet" / "config.json", folder / "unet" / "config.json")
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:4096])
    code, lines, _ = run_cli(capsys, "fit", "--config", "gs_sds.yaml", f"prior.name={folder}", f"output_dir={out}",
                             *QUICK)
    assert_one_line(lines, code, 2, "cannot load the prior")
    assert not out.exists()


def test_unwritable_output_folder_is_one_line(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    code, lines, _ = run_cli(capsys, "fit", "--config", "gs_oracle.yaml", f"output_dir={blocker / 'out'}",
                             "trainer.max_steps=2", *QUICK)
    assert_one_line(lines, code, 2, "cannot write or read", str(blocker))


def test_full_disk_while_checkpointing_cleans_up_and_keeps_the_last_checkpoint(tmp_path, monkeypatch, capsys):
    import pytorch_lightning as pl

    real = pl.Trainer.save_checkpoint
    calls = []

    def full_disk(self, path, *args, **kwargs):
        calls.append(path)
        if len(calls) == 1:
            return real(self, path, *args, **kwargs)
        Path(path).write_bytes(b"partial")  # a partly written temporary file, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pl.Trainer, "save_checkpoint", full_disk)
    out = tmp_path / "out"
    code, lines, _ = run_cli(capsys, "fit", "--no-export", "--config", "gs_oracle.yaml", "trainer.max_steps=10",
                             "trainer.checkpoint_every=5", f"output_dir={out}", *QUICK)
    assert_one_line(lines, code, 2, "cannot write a checkpoint", "No space left on device", "previous checkpoint")
    (run,) = [p for p in (out / "gs_oracle").iterdir() if not p.is_symlink()]
    assert sorted(p.name for p in (run / "ckpts").iterdir()) == ["last.ckpt"]  # no .tmp left behind
    assert load_checkpoint(run / "ckpts" / "last.ckpt")["global_step"] == 5


def test_nonfinite_loss_every_step_stops_with_exit_3_and_finite_checkpoint(tmp_path, capsys):
    out = tmp_path / "out"
    # the oracle's SDS loss is ~45 at the start; × 1e308 overflows to inf at every step (no step ever applies)
    code, lines, _ = run_cli(capsys, "fit", "--config", "gs_oracle.yaml", "trainer.max_steps=100",
                             "loss.lambda_sds=1e308", "trainer.checkpoint_every=5", "trainer.nonfinite_patience=12",
                             f"output_dir={out}", *QUICK)
    assert_one_line(lines, code, 3, "NaN or infinite for 12 steps in a row")
    (run,) = [p for p in (out / "gs_oracle").iterdir() if not p.is_symlink()]
    state = load_checkpoint(run / "ckpts" / "last.ckpt")["state_dict"]
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())
    assert not (run / "exports").exists()


def test_export_takes_export_overrides_and_checks_formats_first(run_copy, capsys):
    exports = run_copy / "exports"
    code, lines, _ = run_cli(capsys, "export", run_copy, "--format", "ply,pyl")
    assert_one_line(lines, code, 2, "unknown export format 'pyl'", "ply")
    assert not exports.exists()  # the valid format was not written first
    code, lines, _ = run_cli(capsys, "export", run_copy, "--format", "ply", "trainer.max_steps=5")
    assert_one_line(lines, code, 2, "export.* overrides only")
    code, lines, _ = run_cli(capsys, "export", run_copy, "--format", "ply", "export.mesh_treshold=0.2")
    assert_one_line(lines, code, 2, "export.mesh_threshold")  # the closest valid key
    code, lines, _ = run_cli(capsys, "export", run_copy, "--format", "ply", "export.mesh_threshold=0.2")
    assert code == 0 and (exports / "gaussians.ply").is_file()


def test_glb_of_an_empty_model_is_one_line(run_copy, capsys):
    ckpt_path = run_copy / "ckpts" / "last.ckpt"
    ckpt = load_checkpoint(ckpt_path)
    for key in ckpt["state_dict"]:
        if key.endswith("opacity_logits"):
            ckpt["state_dict"][key].fill_(-30.0)  # every Gaussian transparent
    torch.save(ckpt, ckpt_path)
    code, lines, _ = run_cli(capsys, "export", run_copy, "--format", "glb", "export.mesh_preview=false")
    assert_one_line(lines, code, 2, "nothing to export")
    assert not list((run_copy / "exports").glob("*.glb")) if (run_copy / "exports").exists() else True


def test_empty_checkpoint_in_a_run_is_one_line(run_copy, capsys):
    (run_copy / "ckpts" / "last.ckpt").write_bytes(b"")
    before = tree_digest(run_copy)
    for argv in (["export", run_copy, "--format", "ply"], ["fit", f"resume={run_copy}", "trainer.max_steps=20"]):
        code, lines, _ = run_cli(capsys, *argv)
        assert_one_line(lines, code, 2, "is empty (0 bytes)")
    assert tree_digest(run_copy) == before
