"""The live viewer: viser's camera → dreamkit Cameras (hand-checked), a clear error without viser, and in a real
browser: `dreamkit fit ... viewer=true` serves a page that connects, shows steps, renders again when the camera is
dragged, and Pause stops the steps; `dreamkit view <run>` renders a finished run."""
from __future__ import annotations

import io
import math
import os
import re
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import torch

from dreamkit.cameras import cameras_from_spherical
from dreamkit.cli import main
from dreamkit.viewer.server import cameras_from_viser, quaternion_to_matrix, render_size


# ------------------------------------------------------------------------------------------------ camera conversion
def test_camera_on_plus_z_looking_at_the_origin():
    """Hand-checked: a camera at (0, 0, 3) looking at the origin with +Y up has OpenCV axes x = +X (right),
    y = −Y (down), z = −Z (forward): R = diag(1, −1, −1), a half turn about X, quaternion (w, x, y, z) =
    (0, 1, 0, 0). It is dreamkit's spherical camera at elevation 0, azimuth 0, distance 3."""
    cam = cameras_from_viser((0.0, 1.0, 0.0, 0.0), (0.0, 0.0, 3.0), math.radians(40.0), 1.0, 64)
    expected = torch.tensor([[1.0, 0, 0, 0], [0, -1, 0, 0], [0, 0, -1, 3], [0, 0, 0, 1]])
    torch.testing.assert_close(cam.c2w[0], expected)
    ref = cameras_from_spherical(torch.zeros(1), torch.zeros(1), torch.full((1,), 3.0), torch.full((1,), 40.0), 64, 64)
    torch.testing.assert_close(cam.c2w, ref.c2w, atol=1e-6, rtol=0)
    torch.testing.assert_close(cam.K, ref.K)
    assert (cam.width, cam.height) == (64, 64)
    assert cam.elevation.item() == pytest.approx(0.0, abs=1e-5) and cam.azimuth.item() == pytest.approx(0.0, abs=1e-5)
    assert cam.distance.item() == pytest.approx(3.0) and cam.fovy.item() == pytest.approx(40.0)
    # the origin lands in the image centre; +X world on the right, +Y world up (smaller v)
    world = torch.tensor([[0.0, 0, 0, 1], [0.5, 0, 0, 1], [0, 0.5, 0, 1]]).T
    p = (cam.viewmats[0] @ world)[:3]
    uv = (cam.K[0] @ p)[:2] / p[2]
    f = 32 / math.tan(math.radians(20))
    torch.testing.assert_close(uv[:, 0], torch.tensor([32.0, 32.0]))
    torch.testing.assert_close(uv[:, 1], torch.tensor([32.0 + f * 0.5 / 3, 32.0]))
    torch.testing.assert_close(uv[:, 2], torch.tensor([32.0, 32.0 - f * 0.5 / 3]))


def test_camera_orbit_and_wide_canvas():
    """A camera on +X at elevation 30° (dreamkit's spherical placement) given as viser would (the rotation as a
    quaternion) comes back as the same camera; a 2:1 canvas renders 64×32 with the same vertical field of view."""
    ref = cameras_from_spherical(torch.tensor([30.0]), torch.tensor([90.0]), torch.tensor([2.5]), torch.tensor([35.0]),
                                 64, 32)
    R = ref.c2w[0, :3, :3].double().numpy()
    w = math.sqrt(max(0.0, 1 + R[0, 0] + R[1, 1] + R[2, 2])) / 2   # this rotation has w > 0
    wxyz = (w, (R[2, 1] - R[1, 2]) / (4 * w), (R[0, 2] - R[2, 0]) / (4 * w), (R[1, 0] - R[0, 1]) / (4 * w))
    np.testing.assert_allclose(quaternion_to_matrix(wxyz), R, atol=1e-6)
    cam = cameras_from_viser(wxyz, ref.c2w[0, :3, 3].tolist(), math.radians(35.0), 2.0, 64)
    torch.testing.assert_close(cam.c2w, ref.c2w, atol=1e-5, rtol=0)
    torch.testing.assert_close(cam.K, ref.K, atol=1e-4, rtol=0)
    assert cam.elevation.item() == pytest.approx(30.0, abs=1e-4)
    assert cam.azimuth.item() == pytest.approx(90.0, abs=1e-4)
    assert render_size(2.0, 64) == (64, 32) and render_size(0.5, 64) == (32, 64) and render_size(0.0, 64) == (64, 64)


@pytest.mark.parametrize("recipe", ["gs_oracle", "nerf_oracle", "triplane_oracle", "mesh_oracle"])
def test_every_representation_renders_the_browser_camera(recipe):
    """The viewer renders through each representation's own ``render``: a wide canvas gives a wide image, and a
    square one the same picture as dreamkit's own camera at that pose (the conversion holds through the renderer)."""
    from dreamkit.components import build_representation
    from dreamkit.config import load_config

    rep = build_representation(load_config(recipe, []), torch.Generator().manual_seed(0)).eval()
    white = torch.ones(1, 3)
    with torch.no_grad():
        wide = rep.render(cameras_from_viser((0.0, 1.0, 0.0, 0.0), (0.0, 0.0, 3.0), math.radians(40), 1.6, 48),
                          background=white).rgb
        square = rep.render(cameras_from_viser((0.0, 1.0, 0.0, 0.0), (0.0, 0.0, 3.0), math.radians(40), 1.0, 32),
                            background=white).rgb
        ref = rep.render(cameras_from_spherical(torch.zeros(1), torch.zeros(1), torch.full((1,), 3.0),
                                                torch.full((1,), 40.0), 32, 32), background=white).rgb
    assert wide.shape == (1, 30, 48, 3) and wide.std() > 0.01
    torch.testing.assert_close(square, ref, atol=1e-4, rtol=0)


def test_missing_viser_is_one_line_before_anything_is_written(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "viser", None)   # import viser → ImportError
    code = main(["fit", "--config", "gs_oracle.yaml", "viewer=true", f"output_dir={tmp_path}", "trainer.max_steps=2"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error:") and 'pip install -e ".[viewer]"' in err
    assert not any(tmp_path.iterdir())
    assert main(["view", str(tmp_path / "nope")]) == 2
    assert "run folder not found" in capsys.readouterr().err
    assert main(["view", str(tmp_path), "--resolution", "8"]) == 2
    assert "--resolution 8" in capsys.readouterr().err


@pytest.mark.parametrize("item", ["viewer_port=70000", "viewer_budget=0", "viewer_resolution=8", "viewer=maybe"])
def test_bad_viewer_settings_are_refused(item, tmp_path, capsys):
    assert main(["fit", "--config", "gs_oracle.yaml", item, f"output_dir={tmp_path}"]) == 2
    assert item.split("=")[0] in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ in a browser
def _start(cmd: list[str], timeout: float = 90.0) -> tuple[subprocess.Popen, str, list[str]]:
    """Start a dreamkit command that serves a viewer; return (process, its URL, its output lines so far — the list
    keeps filling from a thread)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "dreamkit", *cmd], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=env, start_new_session=True)
    lines: list[str] = []
    found = threading.Event()

    def read():
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("viewer: "):
                found.set()
        found.set()

    threading.Thread(target=read, daemon=True).start()
    found.wait(timeout)
    url = next((m.group(1) for m in (re.match(r"viewer: (http://\S+)", x) for x in lines) if m), None)
    if url is None:
        proc.kill()
        raise AssertionError("no viewer URL:\n" + "".join(lines[-30:]))
    return proc, url, lines


def _status(page) -> dict:
    """The status panel: step, state, renders (the server's count of pictures sent)."""
    text = page.inner_text("body")
    step = re.search(r"step (\d+) / (\d+) · (\w+)", text)
    renders = re.search(r"renders (\d+)", text)
    if not step or not renders:
        return {}
    return {"step": int(step.group(1)), "state": step.group(3), "renders": int(renders.group(1))}


def _wait(page, predicate, timeout: float = 30.0, what: str = "") -> dict:
    deadline = time.time() + timeout
    status = {}
    while time.time() < deadline:
        status = _status(page)
        if status and predicate(status):
            return status
        page.wait_for_timeout(100)
    raise AssertionError(f"timed out waiting for {what}; last status {status}")


def _centre(page) -> np.ndarray:
    """The middle of the 3D view (the background image only: no scene objects there), as an RGB array."""
    import imageio.v3 as iio

    shot = page.screenshot(clip={"x": 150, "y": 150, "width": 300, "height": 300})
    return iio.imread(io.BytesIO(shot))[..., :3].astype(np.int32)


def _drag(page) -> None:
    page.mouse.move(300, 330)
    page.mouse.down()
    for i in range(1, 11):
        page.mouse.move(300 + 18 * i, 330 + 4 * i)
        page.wait_for_timeout(20)
    page.mouse.up()


@pytest.fixture
def viser():
    return pytest.importorskip("viser", reason='needs viser: pip install -e ".[viewer]"')


def test_fit_with_viewer_in_a_browser(chromium, viser, tmp_path):
    """`dreamkit fit ... viewer=true`: the page connects and shows the step advancing; Pause stops the steps (the
    step does not move for 2 s); a camera drag while paused brings a new picture (the server's render count rises
    and the middle of the view changes, while the step stays); Export now writes the step's exports; Resume lets the
    steps go on; SIGINT then ends the fit as usual (checkpoint, exit 130)."""
    proc, url, lines = _start(["fit", "--config", "gs_oracle.yaml", "viewer=true", "viewer_port=0",
                               "viewer_resolution=64", f"output_dir={tmp_path}", "trainer.max_steps=100000",
                               "trainer.progress=false", "trainer.val_every=0", "trainer.checkpoint_every=0",
                               "representation.num_points=500", "camera.width=32", "camera.height=32",
                               "prior.resolution=32", "export.formats=[ply]", "export.turntable=false"])
    page = chromium.new_page(viewport={"width": 1000, "height": 700})
    try:
        page.goto(url)
        first = _wait(page, lambda s: s["renders"] >= 1 and s["step"] > 0, what="a first render and steps")
        _wait(page, lambda s: s["step"] > first["step"], what="the step to advance")
        page.get_by_role("button", name="Pause").click()
        paused = _wait(page, lambda s: s["state"] == "paused", what="the pause")
        page.wait_for_timeout(2000)
        still = _status(page)
        assert still["step"] == paused["step"], (paused, still)
        # a camera move while paused: a new render of the same step
        page.wait_for_timeout(300)
        before = _centre(page)
        _drag(page)
        moved = _wait(page, lambda s: s["renders"] > still["renders"], what="a render after the camera move")
        assert moved["step"] == paused["step"]
        page.wait_for_timeout(500)
        after = _centre(page)
        assert np.abs(after - before).mean() > 2.0, "the view did not change after the camera move"
        # Export now (while paused): the run's exports of this step in exports/step_NNNNNN/
        page.get_by_role("button", name="Export now").click()
        page.wait_for_function("document.body.innerText.includes('wrote gaussians.ply')", timeout=30_000)
        (run,) = [p for p in tmp_path.glob("*/*") if p.is_dir() and not p.is_symlink()]
        assert (run / "exports" / f"step_{paused['step']:06d}" / "gaussians.ply").is_file()
        assert _status(page)["step"] == paused["step"]
        page.get_by_role("button", name="Resume").click()
        _wait(page, lambda s: s["state"] == "training" and s["step"] > paused["step"], what="steps after Resume")
    finally:
        page.close()
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            raise
    out = "".join(lines)
    assert proc.returncode == 130, out[-3000:]
    assert "interrupted (SIGINT)" in out


def test_view_a_finished_run_in_a_browser(chromium, viser, red_run):
    """`dreamkit view <run>`: the page connects and shows the run's red object rendered from the browser's camera."""
    proc, url, lines = _start(["view", str(red_run), "--port", "0", "--resolution", "64"])
    page = chromium.new_page(viewport={"width": 1000, "height": 700})
    try:
        page.goto(url)
        status = _wait(page, lambda s: s["renders"] >= 1, what="a first render")
        assert status["step"] == 20 and status["state"] == "finished"
        page.wait_for_timeout(500)
        rgb = _centre(page)
        r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
        red = (r > 100) & (r > g + 50) & (r > b + 50)
        assert red.mean() > 0.05, f"only {red.mean():.1%} of the view is red"
    finally:
        page.close()
        proc.terminate()
        proc.wait(30)


def test_view_reloads_a_newer_checkpoint_and_keeps_the_last_good_one(red_run, tmp_path):
    """`dreamkit view` of a run still training: a newer checkpoint is loaded when it appears; one that cannot be
    read (being written, damaged) keeps the model shown; both through the safe loader."""
    import shutil

    from dreamkit.checkpoint import load_checkpoint
    from dreamkit.run import load_run
    from dreamkit.viewer.view import _LoadedRun

    run = tmp_path / "run"
    shutil.copytree(red_run, run, ignore=shutil.ignore_patterns("report*"))
    run_dir, cfg, ckpt = load_run(run)
    loaded = _LoadedRun(run_dir, cfg, ckpt, torch.device("cpu"))
    assert loaded.refresh() and loaded.step == 20
    assert not loaded.refresh()                      # unchanged: not read again
    state = load_checkpoint(ckpt)
    state["global_step"] = 25
    state["state_dict"]["representation.params.sh0"] = state["state_dict"]["representation.params.sh0"] * 0
    torch.save(state, ckpt.with_name("new.ckpt"))
    os.replace(ckpt.with_name("new.ckpt"), ckpt)     # as AtomicCheckpoint does
    assert loaded.refresh() and loaded.step == 25
    ckpt.write_bytes(b"torn")
    assert not loaded.refresh() and loaded.step == 25 and loaded.model is not None
    image = loaded.render(cameras_from_viser((0.0, 1.0, 0.0, 0.0), (0.0, 0.0, 3.0), math.radians(40), 1.0, 32))
    assert image.shape == (32, 32, 3)


def test_time_slider_of_a_4d_representation_sets_the_rendered_time(viser):
    """A dynamic representation gets a "time τ" slider; a tab's picture is rendered at the slider's time."""
    from types import SimpleNamespace

    from dreamkit.cameras import orbit_cameras
    from dreamkit.viewer.server import ViewerServer, _Client

    server = ViewerServer("4d", "127.0.0.1", 0, 32, orbit_cameras(1, 32, 32), buttons=(), dynamic=True)
    static = ViewerServer("3d", "127.0.0.1", 0, 32, orbit_cameras(1, 32, 32), buttons=())
    try:
        assert static.time == 0.0 and static._time is None
        sent = []
        camera = SimpleNamespace(wxyz=(1.0, 0.0, 0.0, 0.0), position=(0.0, 0.0, 3.0), fov=0.7, aspect=1.0)
        handle = SimpleNamespace(camera=camera, client_id=1,
                                 scene=SimpleNamespace(set_background_image=lambda image, **kw: sent.append(image)))
        server._clients[1] = _Client(handle)
        seen = []

        def render(cams):
            seen.append(float(cams.time[0]))
            return torch.zeros(cams.height, cams.width, 3)

        server._time.value = 0.7
        server.render_pending(render, step=0)
        assert seen == [pytest.approx(0.7)] and len(sent) == 1
        server._mark_all()
        server._time.value = 0.25
        server.render_pending(render, step=0, moved_only=True)
        assert seen[-1] == pytest.approx(0.25)
    finally:
        server.server.stop()
        static.server.stop()
