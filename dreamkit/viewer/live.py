"""``dreamkit fit ... viewer=true``: the live viewer as a Lightning callback.

Everything happens in the training thread, between steps, so the viewer never races the optimizer or
densification and never changes what a step computes:

* after each step the callback renders for the browser tabs whose camera moved, and every ``viewer_refresh``
  seconds for those whose picture shows an older step — but only once the time since its last render is long
  enough that rendering stays within ``viewer_budget`` of the wall time (render for r seconds, then wait
  r·(1 − b)/b); training keeps ≥ 1 − b of its steps/s whatever the render costs;
* renders use the representation's own ``render`` (``DreamSystem.render_views``: the export member, the solid
  background, no gradients) inside ``torch.random.fork_rng``, so a viewed run draws the same random numbers as an
  unviewed one (resume stays exact);
* Pause blocks after the current step (renders still answer camera moves, without the budget); Resume continues;
  Export now writes the run's exports (``export.formats`` and the turntable) for the current step into
  ``exports/step_NNNNNN/``; SIGINT / SIGTERM while paused end the pause so the fit stops as usual.
"""
from __future__ import annotations

import collections
import contextlib
import math
import time
from pathlib import Path
from typing import Any, Callable, Optional

import pytorch_lightning as pl
import torch

from .server import ViewerServer, ViewerStatus

#: seconds between status-panel updates, and between loss-plot updates (each makes the browser draw again)
STATUS_EVERY = 1.0
PLOT_EVERY = 5.0
#: seconds of steps that the steps/s shown is measured over
RATE_WINDOW = 20.0


def viewer_resolution(setting: int, device: torch.device) -> int:
    """``viewer_resolution`` 0 = auto: 128 pixels on the CPU, 512 on CUDA."""
    if int(setting) > 0:
        return int(setting)
    return 512 if device.type == "cuda" else 128


@contextlib.contextmanager
def untouched_rng(device: torch.device):
    """Random number state of the CPU (and ``device`` on CUDA) restored afterwards."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        yield


class LiveViewer(pl.Callback):
    """Serves the viewer while a fit trains (see the module docstring).

    Args:
        cfg: the run's config (``viewer_*``, ``export.*``).
        run_dir: the run folder (exports go to ``<run>/exports/step_NNNNNN/``).
        max_steps: the fit's last step (for the ETA).
        eval_camera: one camera that new tabs start from.
        stop_requested: True once SIGINT / SIGTERM arrived (ends a pause).
    """

    def __init__(self, cfg: Any, run_dir: Path, max_steps: int, eval_camera: Any,
                 stop_requested: Callable[[], bool] = lambda: False):
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.max_steps = int(max_steps)
        self.eval_camera = eval_camera
        self.stop_requested = stop_requested
        self.budget = float(cfg.viewer_budget)
        #: a tab whose camera did not move gets a picture of newer training at most this often (seconds,
        #: ``viewer_refresh``); a camera move is answered as soon as the budget allows
        self.refresh_every = float(cfg.get("viewer_refresh", 15.0))
        self.server: Optional[ViewerServer] = None
        self.paused = False
        self.losses: list[tuple[int, float]] = []
        self.notes: list[str] = []
        self._marks: collections.deque = collections.deque()  # (time, step) for steps/s
        self._excluded = 0.0             # seconds paused or exporting: not training time
        self._next_render = 0.0
        self._next_refresh = 0.0
        self._next_status = 0.0
        self._next_plot = 0.0
        self._train_start = 0.0

    # -- lifecycle ----------------------------------------------------------------------------------------------
    def on_train_start(self, trainer: pl.Trainer, pl_module: Any) -> None:
        resolution = viewer_resolution(int(self.cfg.viewer_resolution), pl_module.device)
        title = f"{self.cfg.prompt} — {self.cfg.name}"
        self.server = ViewerServer(title, str(self.cfg.viewer_host), int(self.cfg.viewer_port), resolution,
                                   self.eval_camera, buttons=("pause", "resume", "export"),
                                   dynamic=bool(getattr(pl_module.representation, "dynamic", False)))
        self._train_start = time.perf_counter()
        self._marks.append((self._train_start, int(trainer.global_step)))
        print(f"viewer: {self.server.url}  (renders {resolution} px, at most {self.budget:.0%} of the time)",
              flush=True)
        self._update_status(trainer, force=True)

    def on_train_end(self, trainer: pl.Trainer, pl_module: Any) -> None:
        self.close(trainer)

    def on_exception(self, trainer: pl.Trainer, pl_module: Any, exception: BaseException) -> None:
        self.close(trainer)

    def close(self, trainer: Optional[pl.Trainer] = None) -> None:
        if self.server is None:
            return
        if trainer is not None:
            self._update_status(trainer, force=True, state="finished" if trainer.global_step >= self.max_steps
                                else "stopped")
        wall = max(time.perf_counter() - self._train_start - self._excluded, 1e-9)
        print(f"viewer: {self.server.renders} render(s) in {self.server.render_seconds:.1f} s "
              f"({self.server.render_seconds / wall:.1%} of the training time)", flush=True)
        self.server.close()
        self.server = None

    # -- between steps ------------------------------------------------------------------------------------------
    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: Any, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self.server is None:
            return
        step = int(trainer.global_step)
        self._record_loss(step, outputs, pl_module)
        now = time.perf_counter()
        self._marks.append((now, step))
        while len(self._marks) > 2 and now - self._marks[0][0] > RATE_WINDOW:
            self._marks.popleft()
        self._handle_requests(trainer, pl_module)
        if now >= self._next_render:
            # tabs whose camera moved; and, every refresh_every s, those that show an older step
            stale = now >= self._next_refresh
            if self.server.pending(step, moved_only=not stale):
                spent = self.server.render_pending(self._renderer(pl_module, step), step, moved_only=not stale)
                # rendering takes at most `budget` of the time: after r seconds of it, r·(1 − b)/b without
                self._next_render = time.perf_counter() + spent * (1 - self.budget) / self.budget
                if stale:
                    self._next_refresh = now + self.refresh_every
        self._update_status(trainer)
        if self.paused:
            self._pause_loop(trainer, pl_module)

    def _pause_loop(self, trainer: pl.Trainer, pl_module: Any) -> None:
        """Block between steps until Resume (or a stop signal); camera moves still get renders, at once."""
        t0 = time.perf_counter()
        step = int(trainer.global_step)
        self.server.set_paused(True)
        self._update_status(trainer, force=True)
        while self.paused and not self.stop_requested() and self.server is not None:
            self._handle_requests(trainer, pl_module)
            if self.server.pending(step):
                self.server.render_pending(self._renderer(pl_module, step), step)
            self._update_status(trainer)
            time.sleep(0.03)
        if self.server is not None:
            self.server.set_paused(False)
        self._exclude(time.perf_counter() - t0)
        self._update_status(trainer, force=True)

    def _exclude(self, seconds: float) -> None:
        """Shift the steps/s window by time that was not training (a pause, an export)."""
        self._marks = collections.deque((t + seconds, s) for t, s in self._marks)
        self._excluded += seconds

    def _handle_requests(self, trainer: pl.Trainer, pl_module: Any) -> None:
        requests = self.server.take_requests()
        if "pause" in requests and not self.paused:
            self.paused = True
            self._note(f"paused at step {trainer.global_step}")
        if "resume" in requests and self.paused:
            self.paused = False
            self._note(f"resumed at step {trainer.global_step}")
        if "export" in requests:
            t0 = time.perf_counter()
            self._export(trainer, pl_module)
            if not self.paused:
                self._exclude(time.perf_counter() - t0)

    def _export(self, trainer: pl.Trainer, pl_module: Any) -> None:
        from ..errors import DreamkitError
        from ..run import export_run

        step = int(trainer.global_step)
        out = self.run_dir / "exports" / f"step_{step:06d}"
        formats = list(self.cfg.export.formats) + (["mp4"] if self.cfg.export.turntable else [])
        self._note(f"exporting step {step} …")
        self._update_status(trainer, force=True)
        modes = {name: m.training for name, m in pl_module.named_modules()}
        try:
            with untouched_rng(pl_module.device):  # gradients stay on: some exporters differentiate the field
                written = export_run(self.run_dir, formats, system=pl_module, out_dir=out)
            self._note(f"step {step}: wrote " + ", ".join(p.name for p in written) + f" in exports/{out.name}")
        except DreamkitError as err:
            self._note(f"export at step {step} failed: {err}")
            print(f"viewer: export at step {step} failed: {err}", flush=True)
        finally:
            for name, module in pl_module.named_modules():  # export_run puts the representation in eval mode
                module.training = modes.get(name, module.training)

    def _renderer(self, pl_module: Any, step: int) -> Callable:
        def render(cameras: Any) -> torch.Tensor:
            with untouched_rng(pl_module.device):
                return pl_module.render_views(cameras, step=step)[0]
        return render

    # -- status -------------------------------------------------------------------------------------------------
    def _record_loss(self, step: int, outputs: Any, pl_module: Any) -> None:
        """The loss of logging steps (the step reads it back then anyway; other steps never synchronise)."""
        if not pl_module.is_log_step(step - 1):
            return
        if isinstance(outputs, dict):
            outputs = outputs.get("loss")
        if torch.is_tensor(outputs):
            value = float(outputs.detach())
            if math.isfinite(value):
                self.losses.append((step, value))

    def _note(self, text: str) -> None:
        self.notes.append(text)

    def steps_per_s(self) -> Optional[float]:
        if len(self._marks) < 2:
            return None
        (t0, s0), (t1, s1) = self._marks[0], self._marks[-1]
        return (s1 - s0) / (t1 - t0) if t1 > t0 and s1 > s0 else None

    def _update_status(self, trainer: pl.Trainer, force: bool = False, state: Optional[str] = None) -> None:
        now = time.perf_counter()
        if self.server is None or (not force and now < self._next_status):
            return
        self._next_status = now + STATUS_EVERY
        step = int(trainer.global_step)
        rate = self.steps_per_s()
        eta = (self.max_steps - step) / rate if rate else None
        self.server.show(ViewerStatus(step=step, max_steps=self.max_steps, steps_per_s=rate, eta_s=eta,
                                      loss=self.losses[-1][1] if self.losses else None,
                                      state=state or ("paused" if self.paused else "training"), notes=self.notes))
        if self.losses and (force or now >= self._next_plot):
            self._next_plot = now + PLOT_EVERY
            steps, values = zip(*self.losses)
            self.server.plot(steps, values)
