"""Scale-out (issue 24): `dreamkit batch` on Ray (kill the driver halfway, rerun, nothing fitted twice), and one fit
in two processes (Lightning DDP over gloo) against one process with the same total batch, killed and resumed."""
from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from dreamkit.cli import main
from dreamkit.run import checkpoint_step, run_folders

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
# make the worktree's dreamkit win in the child processes (as it does here)
ENV["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parents[1])] +
                                    [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])

#: a short oracle fit at 32²: the batch test's fits and the DDP tests' fit
FAST = ["prior.resolution=32", "camera.width=32", "camera.height=32", "representation.num_points=800",
        "trainer.val_every=0", "export.formats=[]", "export.turntable=false", "report=false", "trainer.progress=false"]


def _dreamkit(args: list[str], **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "dreamkit", *args], env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **kw)


def _wait(condition, timeout: float, what: str, proc: subprocess.Popen | None = None):
    deadline = time.time() + timeout
    while True:
        value = condition()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the process ended (rc {proc.returncode}) before {what}:\n{proc.stdout.read()}")
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


# ---------------------------------------------------------------------------------------------------- dreamkit batch
PROMPTS = ["a red cube", "a blue sphere", "a green cone", "a yellow torus"]


def _manifest(out: Path) -> dict | None:
    try:
        return json.loads((out / "manifest.json").read_text())
    except (OSError, ValueError):
        return None


#: the batch test's fit length: long enough that a fit caught in its first half (a checkpoint at step ≤ STEPS/2) is
#: still training when the stop request or the SIGKILL arrives (these fits run ~55 steps/s on one quiet core)
STEPS = 400


def _running_with_checkpoint(out: Path, done_at_least: int, since_ns: int = 0):
    """The manifest once ≥ ``done_at_least`` prompts are done and a running one is halfway: it has a checkpoint,
    written in its first half (so the interruption that follows cannot come after its last step) and after
    ``since_ns`` (by this driver)."""
    m = _manifest(out)
    if not m or sum(e["state"] == "done" for e in m["prompts"]) < done_at_least:
        return None
    for e in m["prompts"]:
        if e["state"] != "running":
            continue
        for ckpt in (out / "runs" / e["id"]).glob("*/*/ckpts/last.ckpt"):
            if ckpt.stat().st_mtime_ns > since_ns and 0 <= checkpoint_step(ckpt.parent.parent) <= STEPS // 2:
                return m
    return None


def test_batch_on_ray_survives_ctrl_c_and_a_killed_driver_without_fitting_a_prompt_twice(tmp_path):
    pytest.importorskip("ray")
    out = tmp_path / "batch"
    args = ["batch", "--config", "gs_oracle.yaml", "--prompts", *PROMPTS, "--out", str(out), "--jobs", "2",
            *FAST, f"trainer.max_steps={STEPS}", "trainer.checkpoint_every=20", "export.mesh_resolution=32"]
    # 1. Ctrl-C once a prompt is done and another is halfway: the running fits checkpoint, the driver exits 130
    driver = _dreamkit(args)
    _wait(lambda: _running_with_checkpoint(out, 1), 240, "a prompt done and one halfway", driver)
    driver.send_signal(signal.SIGINT)
    log1, _ = driver.communicate(timeout=120)
    assert driver.returncode == 130, log1
    after_int = _manifest(out)
    assert not [e for e in after_int["prompts"] if e["state"] == "running"], after_int
    done1 = {e["id"]: e for e in after_int["prompts"] if e["state"] == "done"}
    assert done1 and len(done1) < len(PROMPTS)
    stamps = {pid: next((out / "runs" / pid).glob("*/*/ckpts/last.ckpt")).stat().st_mtime_ns for pid in done1}
    # 2. run again, and kill the driver outright (SIGKILL: no clean-up) when another prompt is halfway
    started = time.time_ns()
    driver = _dreamkit(args)
    lock = out / ".batch.lock"
    _wait(lambda: lock.read_text().strip() == str(driver.pid), 120, "the driver to hold the lock", driver)
    # a second driver on the same folder is refused while one runs
    blocked = subprocess.run([sys.executable, "-m", "dreamkit", *args], env=ENV, capture_output=True, text=True,
                             timeout=120)
    assert blocked.returncode == 2 and f"another dreamkit batch (pid {driver.pid})" in blocked.stderr, blocked.stderr
    _wait(lambda: _running_with_checkpoint(out, len(done1), since_ns=started), 240, "another prompt halfway", driver)
    driver.kill()
    driver.communicate(timeout=60)
    stale = _manifest(out)
    assert [e for e in stale["prompts"] if e["state"] == "running"]  # left behind by the killed driver
    # 3. the same command completes the table
    driver = _dreamkit(args)
    log3, _ = driver.communicate(timeout=300)
    assert driver.returncode == 0, log3
    final = _manifest(out)
    with open(out / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["prompt"] for r in rows] == PROMPTS
    assert all(r["state"] == "done" and r["final_loss"] and Path(r["run_dir"]).is_dir() for r in rows)
    assert all(r["nearest_shape"] and r["colour"] for r in rows)  # the world's scores
    assert (out / "results.md").read_text().count("| done |") == 4 and (out / "contact_sheet.png").is_file()
    for entry in final["prompts"]:
        # one run folder per prompt: interrupted fits were resumed, never started again
        runs = run_folders(out / "runs" / entry["id"])
        assert runs == [Path(entry["run_dir"])], (entry, runs)
        if entry["id"] in done1:  # finished before the first interruption: not run again
            assert entry["attempts"] == 1
            ckpt = next((out / "runs" / entry["id"]).glob("*/*/ckpts/last.ckpt"))
            assert ckpt.stat().st_mtime_ns == stamps[entry["id"]]
    again_started = [e for e in final["prompts"] if e["attempts"] > 1]
    halfway = [e for e in again_started if "resuming" in (out / "runs" / e["id"] / "fit.log").read_text()]
    assert halfway, "no fit was interrupted halfway and resumed"
    for entry in final["prompts"]:
        # every attempt after the first continued from a checkpoint, except attempts killed before their first one
        # (moved aside to abandoned/, kept) or before their fit began
        log = (out / "runs" / entry["id"] / "fit.log").read_text()
        abandoned = out / "abandoned" / entry["id"]
        fresh = log.count("run folder:") - log.count("resuming from step")
        assert fresh == 1 + (len(list(abandoned.iterdir())) if abandoned.is_dir() else 0), (entry, log[-3000:])
    # nothing left to do: the same command runs nothing
    again = subprocess.run([sys.executable, "-m", "dreamkit", *args], env=ENV, capture_output=True, text=True,
                           timeout=120)
    assert again.returncode == 0 and "4 done earlier (skipped)" in again.stdout and "0 to run" in again.stdout
    assert "running on" not in again.stdout  # no Ray started for nothing


def test_batch_refuses_bad_input_and_foreign_folders(tmp_path, capsys, monkeypatch):
    """One line and exit 2: a missing prompt file, a duplicate prompt, a folder of another batch, Ray missing."""
    base = ["batch", "--config", "gs_oracle.yaml", "--jobs", "1", *FAST, "trainer.max_steps=2"]
    assert main([*base, "--prompts", "missing/prompts.txt", "--out", str(tmp_path / "a")]) == 2
    assert "no such file" in capsys.readouterr().err
    listed = tmp_path / "prompts.txt"
    listed.write_text("# props\na red cube\n\na red cube\n")
    assert main([*base, "--prompts", str(listed), "--out", str(tmp_path / "b")]) == 2
    assert "comes twice" in capsys.readouterr().err
    folder = tmp_path / "c"
    folder.mkdir()
    (folder / "manifest.json").write_text(json.dumps({"format": "dreamkit-batch/1", "identity": "x", "prompts": [],
                                                      "recipe": "other.yaml", "overrides": []}))
    assert main([*base, "--prompts", "a red cube", "--out", str(folder)]) == 2
    assert "holds a batch of another recipe" in capsys.readouterr().err
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "notes.txt").write_text("mine")
    assert main([*base, "--prompts", "a red cube", "--out", str(tmp_path / "d")]) == 2
    assert "not a batch folder" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "ray", None)  # as if the scale extra were not installed
    assert main(["batch", "--config", "gs_oracle.yaml", "--prompts", "a red cube", "--jobs", "2", "--out",
                 str(tmp_path / "e"), *FAST]) == 2
    assert 'pip install -e ".[scale]"' in capsys.readouterr().err


def test_ray_is_not_imported_with_dreamkit():
    code = "import sys, dreamkit, dreamkit.cli, dreamkit.engine, dreamkit.batchfit; print('ray' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], env=ENV, capture_output=True, text=True, timeout=120)
    assert result.stdout.strip() == "False", result.stderr


# ------------------------------------------------------------------------------------------- one fit, two processes
#: 200 steps, one densification at step 100 (646 of 800 Gaussians split at this threshold), checkpoints every 25
DDP = [*FAST, "trainer.max_steps=200", "trainer.checkpoint_every=25", "representation.densify.refine_start=100",
       "representation.densify.refine_every=100", "representation.densify.refine_stop=150",
       "representation.densify.grow_grad2d=0.1", "trainer.exact_batch_sum=true", "camera.batch_size=4"]


def _fit(out: Path, *extra: str) -> subprocess.Popen:
    return _dreamkit(["fit", "--config", "gs_oracle.yaml", *DDP, f"output_dir={out}", *extra])


def _params(run: Path) -> dict:
    ckpt = torch.load(run / "ckpts" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 200
    return {k: v for k, v in ckpt["state_dict"].items() if k.startswith("representation.")}


@pytest.fixture(scope="module")
def one_process_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp") / "one"
    proc = _fit(out)
    log, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, log
    (run,) = run_folders(out)
    return run


def _children(pid: int) -> list[int]:
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            kids.append(int(stat.parent.name))
    return kids


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    return state == "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_two_process_fit_killed_and_resumed_gives_the_one_process_parameters(one_process_run, tmp_path):
    """trainer.devices=2 (gloo): each rank renders 2 of the 4 views of every step. Kill rank zero after the
    densification's checkpoint (the other rank must exit with it), resume with `dreamkit fit resume=`, and the
    parameters after 200 steps are those of one process with the batch of 4 (to 1e-5; here bit for bit)."""
    out = tmp_path / "two"
    proc = _fit(out, "trainer.devices=2")
    ckpt = _wait(lambda: next(iter(out.glob("*/*/ckpts/last.ckpt")), None), 240, "the first checkpoint", proc)
    from dreamkit.checkpoint import checkpoint_global_step

    _wait(lambda: checkpoint_global_step(ckpt) >= 125, 240, "step 125", proc)
    ranks = _children(proc.pid)
    assert ranks, "no second rank was started"
    proc.kill()
    proc.communicate(timeout=60)
    _wait(lambda: all(_gone(pid) for pid in ranks), 30, "the other rank to exit")
    (run,) = run_folders(out)  # the other rank made no folder of its own
    step = checkpoint_global_step(run / "ckpts" / "last.ckpt")
    assert 125 <= step < 200, step
    resumed = _dreamkit(["fit", f"resume={run}"])
    log, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0 and f"resuming from step {step}" in log and "(2 processes)" in log, log
    one, two = _params(one_process_run), _params(run)
    assert one.keys() == two.keys()
    assert one["representation.params.means"].shape[0] > 800  # the densification happened
    for key in one:
        assert one[key].shape == two[key].shape, key
        torch.testing.assert_close(two[key], one[key], rtol=0, atol=1e-5, msg=key)
    saved = torch.load(run / "ckpts" / "last.ckpt", map_location="cpu", weights_only=True)["dreamkit"]["ranks"]
    assert saved["world"] == 2 and len(saved["rank_gen"]) == 2 and not torch.equal(*saved["rank_gen"])


def test_two_processes_refuse_a_batch_that_does_not_split_and_bad_keys(tmp_path, capsys):
    base = ["fit", "--config", "gs_oracle.yaml", f"output_dir={tmp_path}", *FAST]
    assert main([*base, "trainer.devices=2", "camera.batch_size=3"]) == 2
    assert "does not split over 2 processes" in capsys.readouterr().err
    assert main([*base, "trainer.strategy=fsdp"]) == 2
    assert "use auto or ddp" in capsys.readouterr().err
    assert main([*base, "trainer.device=2"]) == 2
    assert "trainer.devices" in capsys.readouterr().err  # the closest key
    assert main([*base, "trainer.devices=2", "viewer=true"]) == 2
    assert "viewer=true watches a fit in one process" in capsys.readouterr().err
    # from Python (here: pytest), the other ranks cannot be started by running the command again
    assert main([*base, "trainer.devices=2"]) == 2
    assert "run it as `dreamkit fit" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())
