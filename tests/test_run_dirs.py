"""Run folders: never reused, ``outputs/<name>/latest`` points to the newest, and a wrong path names the runs there."""
from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from dreamkit.errors import DreamkitError
from dreamkit.run import CONFIG_NAME, load_run, make_run_dir, run_folders


def _cfg(tmp_path, prompt="a red cube"):
    return OmegaConf.create({"output_dir": str(tmp_path), "name": "gs_sds", "prompt": prompt})


def _finish(run):
    (run / CONFIG_NAME).write_text("name: gs_sds\n")
    return run


def test_run_folders_are_new_and_latest_follows(tmp_path):
    first = _finish(make_run_dir(_cfg(tmp_path)))
    second = _finish(make_run_dir(_cfg(tmp_path)))   # same second: the clash gets a suffix, nothing is reused
    assert first != second and first.is_dir() and second.is_dir()
    latest = tmp_path / "gs_sds" / "latest"
    assert latest.is_symlink() and latest.resolve() == second.resolve()
    assert not latest.readlink().is_absolute()          # relative: the outputs folder can be moved
    run_dir, cfg, ckpt = load_run(latest)
    assert run_dir.resolve() == second.resolve() and cfg.name == "gs_sds"
    third = _finish(make_run_dir(_cfg(tmp_path, "a blue sphere")))
    assert latest.resolve() == third.resolve()
    assert run_folders(tmp_path) == sorted([first, second, third])   # the link is not a run of its own
    assert [p.name for p in (tmp_path / "gs_sds").iterdir() if p.name.startswith(".")] == []   # no temp links left


def test_missing_run_names_the_runs_beside_it(tmp_path):
    run = _finish(make_run_dir(_cfg(tmp_path)))
    with pytest.raises(DreamkitError) as err:
        load_run(tmp_path / "gs_sds" / "a_red_cube@20261129-101500")
    message = str(err.value)
    assert "run folder not found" in message and run.name in message and "latest" in message
    with pytest.raises(DreamkitError) as err:   # nothing there at all: no list, still the expected form
        load_run(tmp_path / "nothing" / "here")
    assert "outputs/<name>/latest" in str(err.value)


def test_a_folder_named_latest_is_left_alone(tmp_path):
    (tmp_path / "gs_sds" / "latest").mkdir(parents=True)
    with pytest.warns(UserWarning, match="not a link"):
        run = make_run_dir(_cfg(tmp_path))
    assert run.is_dir() and (tmp_path / "gs_sds" / "latest").is_dir()
    assert not (tmp_path / "gs_sds" / "latest").is_symlink()
