"""Bad input: one clear line on stderr, exit code 2, no traceback, nothing created."""
import subprocess
import sys

import pytest

from dreamkit.cli import main

CASES = {
    "unknown key": (["fit", "--config", "gs_oracle.yaml", "trainer.max_stepz=5"], "did you mean trainer.max_steps"),
    "wrong type": (["fit", "--config", "gs_oracle.yaml", "trainer.max_steps=many"], "trainer.max_steps"),
    "missing config": (["fit", "--config", "nope.yaml"], "config file not found"),
    "negative steps": (["fit", "--config", "gs_oracle.yaml", "trainer.max_steps=-3"], "trainer.max_steps must be"),
    "empty prompt": (["fit", "--config", "gs_oracle.yaml", "prompt= "], "prompt is empty"),
    "prior folder missing": (["fit", "--config", "gs_sds.yaml", "prior.name=/no/such/sd"], "prior folder not found"),
    "unknown lambda": (["fit", "--config", "gs_oracle.yaml", "loss.lambda_sdss=1"], "lambda_sds"),
    "oracle cannot express prompt": (["fit", "--config", "gs_oracle.yaml", "prompt=a purple dragon"], "a house"),
    "missing run": (["export", "/no/such/run"], "run folder not found"),
    # argparse takes --out for --output; a folder-like path used to crash in the image writer
    "sample grid not an image": (["sample", "a red cube", "--prior", "tiny-t2i", "--out", "/tmp/dk_no_such_dir/x"],
                                 "give a path ending in .png"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_exit_2_one_line(name, tmp_path, capsys):
    argv, expected = CASES[name]
    code = main(argv + ([f"output_dir={tmp_path}"] if argv[0] == "fit" else []))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("error: ") and expected in err[0], err
    assert not any(tmp_path.iterdir())  # validation failed before any work


@pytest.mark.parametrize("name", ["unknown key", "prior folder missing"])
def test_bad_input_real_process(name, tmp_path):
    argv, expected = CASES[name]
    proc = subprocess.run([sys.executable, "-m", "dreamkit", *argv, f"output_dir={tmp_path}"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and expected in proc.stderr
    assert proc.stderr.strip().count("\n") == 0


def test_list_names_everything(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for word in ("gaussians", "oracle", "stable-diffusion", "sds", "ply", "mp4", "gs_oracle.yaml", "gs_sds.yaml"):
        assert word in out
