"""The viser page behind ``fit ... viewer=true`` and ``dreamkit view``: the representation rendered by dreamkit's own
renderer from each browser's camera, shown as the scene's background image, with a status panel, a loss plot and
buttons.

The server never renders by itself. Its owner (the training callback, or the ``dreamkit view`` loop) asks
:meth:`ViewerServer.pending` which browsers need a new picture and calls :meth:`ViewerServer.render_pending` with
its own render function, in its own thread, when it can afford it. Camera moves and button presses arrive on
viser's threads and only set flags here (under a lock), so nothing touches the representation outside the thread
that owns it.

viser is optional (``pip install -e ".[viewer]"``) and imported only when a viewer starts.
"""
from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch

from ..cameras import Cameras, intrinsics_from_fovy
from ..errors import DreamkitError

#: how to install the viewer's one dependency (named in every error about it)
VIEWER_INSTALL = 'pip install -e ".[viewer]"'


def import_viser():
    """The ``viser`` module, or one line naming the install command."""
    try:
        import viser
    except ImportError as err:
        raise DreamkitError(f"the live viewer needs viser, which is not installed ({err.name or err}) — "
                            f"{VIEWER_INSTALL} (or pip install viser)") from None
    return viser


def quaternion_to_matrix(wxyz: Sequence[float]) -> np.ndarray:
    """Unit quaternion (w, x, y, z) → [3, 3] rotation matrix (normalised first)."""
    w, x, y, z = (float(v) for v in wxyz)
    n = math.sqrt(w * w + x * x + y * y + z * z)
    if not math.isfinite(n) or n == 0:
        raise ValueError(f"not a rotation quaternion: {tuple(wxyz)}")
    w, x, y, z = w / n, x / n, y / n, z / n
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
        [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
        [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
    ])


def render_size(aspect: float, resolution: int) -> tuple[int, int]:
    """(width, height) of a render for a canvas of ``aspect`` = width / height whose longer side is ``resolution``
    pixels (the canvas's shape, at the viewer's resolution)."""
    aspect = float(aspect) if math.isfinite(aspect) and aspect > 0 else 1.0
    if aspect >= 1:
        return int(resolution), max(1, round(resolution / aspect))
    return max(1, round(resolution * aspect)), int(resolution)


def cameras_from_viser(wxyz: Sequence[float], position: Sequence[float], fov: float, aspect: float,
                       resolution: int) -> Cameras:
    """One dreamkit camera from a viser client's camera.

    viser reports ``wxyz`` and ``position`` as the pose ``P_world = R · p_camera + t`` with OpenCV camera axes (x
    right, y down, z forward) — dreamkit's convention (``dreamkit/cameras.py``), so ``c2w = [R | t]`` as it is.
    ``fov`` is viser's vertical field of view in radians; ``aspect`` the canvas's width / height. The viewer sets
    viser's up direction to +Y, dreamkit's world up, so the world frames are the same. The image's longer side is
    ``resolution`` pixels (:func:`render_size`). Elevation, azimuth and distance are those of the camera centre
    about the origin (dreamkit's spherical placement).
    """
    rotation = torch.tensor(quaternion_to_matrix(wxyz), dtype=torch.float32)
    t = torch.tensor([float(v) for v in position], dtype=torch.float32)
    c2w = torch.eye(4)
    c2w[:3, :3] = rotation
    c2w[:3, 3] = t
    width, height = render_size(aspect, resolution)
    fovy = torch.tensor([math.degrees(float(fov))], dtype=torch.float32)
    distance = t.norm().clamp_min(1e-9)
    elevation = torch.rad2deg(torch.asin((t[1] / distance).clamp(-1, 1)))
    azimuth = torch.rad2deg(torch.atan2(t[0], t[2]))
    return Cameras(c2w[None], intrinsics_from_fovy(fovy, width, height), width, height, elevation.reshape(1),
                   azimuth.reshape(1), distance.reshape(1), fovy)


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """[H, W, 3] in [0, 1] → contiguous uint8 numpy array."""
    return np.ascontiguousarray((image.detach().float().clamp(0, 1) * 255 + 0.5).to(torch.uint8).cpu().numpy())


@dataclass
class _Client:
    """What the viewer knows of one browser tab."""

    handle: Any
    dirty: bool = True          # its camera moved since its last picture
    step: int = -1              # the training step of its last picture
    renders: int = 0


@dataclass
class ViewerStatus:
    """What the status panel shows (all optional: ``dreamkit view`` knows no steps/s of another process)."""

    step: int = 0
    max_steps: int = 0
    steps_per_s: Optional[float] = None
    eta_s: Optional[float] = None
    loss: Optional[float] = None
    state: str = "training"
    notes: list[str] = field(default_factory=list)


class ViewerServer:
    """A viser server with dreamkit's panel: status text, a loss plot, and the buttons asked for.

    Args:
        title: shown at the top of the panel (the run's prompt and recipe).
        host, port: where to listen (a busy port → the next free one, as viser does; 0 = any free port).
        resolution: longer side of the renders in pixels.
        initial: a dreamkit camera (one) that new browser tabs start from.
        buttons: any of "pause", "resume", "export" — the owner polls :meth:`take_requests`.
    """

    def __init__(self, title: str, host: str, port: int, resolution: int, initial: Cameras,
                 buttons: Sequence[str] = ("pause", "resume", "export"), dynamic: bool = False):
        """``dynamic``: a 4D representation — a "time τ" slider sets the time of the rendered camera."""
        viser = import_viser()
        self.resolution = int(resolution)
        self._lock = threading.Lock()
        self._clients: dict[int, _Client] = {}
        self._requests: set[str] = set()
        self.renders = 0                      # pictures sent, all tabs together (shown in the panel)
        self.render_seconds = 0.0
        try:
            self.server = viser.ViserServer(host=host, port=int(port), label="dreamkit", verbose=False)
        except OSError as err:
            raise DreamkitError(f"cannot start the viewer on {host}:{port}: {err.strerror or err} — pass another "
                                "viewer_host / viewer_port (dreamkit view: --host / --port)") from None
        server = self.server
        server.scene.set_up_direction("+y")   # dreamkit's world is +Y up: orbit controls turn about it
        c2w = initial.c2w[0]
        position = c2w[:3, 3].tolist()
        forward = c2w[:3, 2]
        server.initial_camera.position = tuple(position)
        server.initial_camera.look_at = tuple((c2w[:3, 3] + forward * float(initial.distance[0])).tolist())
        server.initial_camera.up = (0.0, 1.0, 0.0)
        server.initial_camera.fov = math.radians(float(initial.fovy[0]))
        server.gui.configure_theme(show_share_button=False, control_width="medium")
        gui = server.gui
        gui.add_markdown(f"**{_md(title)}**")
        self._status = gui.add_markdown("starting…")
        self._buttons: dict[str, Any] = {}
        labels = {"pause": "Pause", "resume": "Resume", "export": "Export now"}
        for name in buttons:
            button = gui.add_button(labels[name], disabled=(name == "resume"))
            button.on_click(lambda _event, name=name: self._request(name))
            self._buttons[name] = button
        self._time = None
        if dynamic:
            self._time = gui.add_slider("time τ", min=0.0, max=1.0, step=0.01, initial_value=0.0)
            self._time.on_update(lambda _event: self._mark_all())
        self._plot = None
        self._plot_points = 0
        self._notes = gui.add_markdown("")
        server.on_client_connect(self._connect)
        server.on_client_disconnect(self._disconnect)

    # -- connection and camera events (viser's threads) ---------------------------------------------------------
    def _connect(self, client: Any) -> None:
        state = _Client(client)
        with self._lock:
            self._clients[client.client_id] = state

        def moved(_camera: Any) -> None:
            with self._lock:
                state.dirty = True

        client.camera.on_update(moved)

    def _disconnect(self, client: Any) -> None:
        with self._lock:
            self._clients.pop(client.client_id, None)

    def _mark_all(self) -> None:
        with self._lock:
            for client in self._clients.values():
                client.dirty = True

    @property
    def time(self) -> float:
        """The time τ the slider shows (0 without one)."""
        return float(self._time.value) if self._time is not None else 0.0

    def _request(self, name: str) -> None:
        with self._lock:
            self._requests.add(name)

    # -- the owner's side ---------------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        host = self.server.get_host()
        shown = "localhost" if host in ("0.0.0.0", "::") else host
        return f"http://{shown}:{self.server.get_port()}"

    @property
    def clients(self) -> int:
        with self._lock:
            return len(self._clients)

    def take_requests(self) -> set[str]:
        """Buttons pressed since the last call ("pause", "resume", "export")."""
        with self._lock:
            out, self._requests = self._requests, set()
        return out

    def pending(self, step: int, moved_only: bool = False) -> list[_Client]:
        """Tabs whose picture is out of date: their camera moved, or (unless ``moved_only``) the model is at another
        step than shown."""
        with self._lock:
            return [c for c in self._clients.values() if c.dirty or (c.step != step and not moved_only)]

    def render_pending(self, render: Callable[[Cameras], torch.Tensor], step: int, moved_only: bool = False) -> float:
        """Render a new picture for every out-of-date tab (:meth:`pending`) with ``render(cameras) -> [H, W, 3] in
        [0, 1]`` and send it as that tab's background; returns the seconds spent."""
        t0 = time.perf_counter()
        for client in self.pending(step, moved_only):
            camera = client.handle.camera
            try:
                with self._lock:
                    client.dirty = False   # a move during the render marks it again
                cams = cameras_from_viser(camera.wxyz, camera.position, camera.fov, camera.aspect, self.resolution)
            except (AssertionError, ValueError, ZeroDivisionError):  # no camera message yet, or a degenerate one
                continue
            cams.time = torch.full_like(cams.time, self.time)
            image = to_uint8(render(cams))
            client.handle.scene.set_background_image(image, format="jpeg", jpeg_quality=90)
            client.step = step
            client.renders += 1
            self.renders += 1
        spent = time.perf_counter() - t0
        self.render_seconds += spent
        return spent

    def show(self, status: ViewerStatus) -> None:
        """Update the status panel."""
        lines = [f"step **{status.step}**" + (f" / {status.max_steps}" if status.max_steps else "")
                 + f" · {status.state}"]
        if status.loss is not None and math.isfinite(status.loss):
            lines.append(f"loss **{status.loss:.4g}**")
        if status.steps_per_s is not None:
            eta = f" · ETA {_duration(status.eta_s)}" if status.eta_s is not None else ""
            lines.append(f"**{status.steps_per_s:.2f}** steps/s{eta}")
        lines.append(f"renders {self.renders} · {self.resolution} px · {self.clients} viewer(s)")
        for handle, content in ((self._status, "  \n".join(lines)),
                                (self._notes, "  \n".join(_md(n) for n in status.notes[-4:]))):
            if handle.content != content:  # an unchanged panel costs the browser nothing
                handle.content = content

    def set_paused(self, paused: bool) -> None:
        if "pause" in self._buttons:
            self._buttons["pause"].disabled = paused
        if "resume" in self._buttons:
            self._buttons["resume"].disabled = not paused

    def plot(self, steps: Sequence[float], values: Sequence[float], title: str = "loss") -> None:
        """The loss plot (created on the first call with at least two points; at most 2000 points are sent)."""
        if len(steps) < 2 or len(steps) == self._plot_points:
            return
        x = np.asarray(steps, dtype=np.float64)
        y = np.asarray(values, dtype=np.float64)
        if len(x) > 2000:
            keep = np.linspace(0, len(x) - 1, 2000).round().astype(int)
            x, y = x[keep], y[keep]
        if self._plot is None:
            self._plot = self.server.gui.add_uplot(
                data=(x, y), series=({"label": "step"}, {"label": title, "stroke": "#d9480f", "width": 1.5}),
                scales={"x": {"time": False}}, title=title, aspect=1.6)
        else:
            self._plot.data = (x, y)
        self._plot_points = len(steps)

    def close(self) -> None:
        try:
            self.server.stop()
        except Exception:  # already stopped, or its loop closed at exit
            pass


def _md(text: str) -> str:
    """Text shown literally in viser's Markdown (a prompt may hold *, _, <, [ ...)."""
    out = []
    for ch in str(text):
        if ch in "\\`*_{}[]()#+-.!|<>~":
            out.append("\\" + ch)
        else:
            out.append(ch)
    return "".join(out)


def _duration(seconds: Optional[float]) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"
