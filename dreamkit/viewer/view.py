"""``dreamkit view <run>``: the viewer for a run folder — its last checkpoint, reloaded whenever a newer one appears
(so a run that is still training can be watched from another process), with its logged loss and an Export now
button. The checkpoint is read with dreamkit's safe loader (``dreamkit/checkpoint.py``): a shared run folder runs no
code. Needs no PyTorch Lightning.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Optional

import torch

from ..errors import DreamkitError
from .server import ViewerServer, ViewerStatus, import_viser

#: seconds between checks for a newer checkpoint (and new logged metrics)
POLL_SECONDS = 2.0


class _LoadedRun:
    """A run's representation at its newest readable checkpoint."""

    def __init__(self, run_dir: Path, cfg: Any, ckpt: Path, device: torch.device):
        self.run_dir, self.cfg, self.ckpt, self.device = run_dir, cfg, ckpt, device
        self.model = None
        self.background = None
        self.step = -1
        self.stamp: Optional[tuple] = None

    def refresh(self) -> bool:
        """Load the checkpoint if it changed since the last load; True when a new one was loaded. A checkpoint
        that cannot be read right now keeps the previous model (raises only when there is none)."""
        from ..checkpoint import CheckpointError, checkpoint_global_step
        from ..components import background_from_checkpoint, load_representation_from_checkpoint

        try:
            info = self.ckpt.stat()
        except FileNotFoundError:
            if self.model is None:
                raise DreamkitError(f"{self.run_dir} has no checkpoint yet ({self.ckpt}) — wait for its first "
                                    "checkpoint (every trainer.checkpoint_every steps), then run dreamkit view "
                                    "again") from None
            return False
        stamp = (info.st_mtime_ns, info.st_size, info.st_ino)
        if stamp == self.stamp:
            return False
        try:
            model = load_representation_from_checkpoint(self.cfg, self.ckpt, self.device)
            background = background_from_checkpoint(self.cfg, self.ckpt).to(self.device)
            step = checkpoint_global_step(self.ckpt)
        except CheckpointError:
            if self.model is None:
                raise
            return False  # e.g. replaced while we read it: the next poll tries again
        self.model, self.background, self.step, self.stamp = model, background, step, stamp
        return True

    @torch.no_grad()
    def render(self, cameras: Any) -> torch.Tensor:
        cams = cameras.to(self.device)
        out = self.model.render(cams, background=self.background.reshape(1, 3).expand(len(cams), 3),
                                step=self.step)
        return out.rgb[0].clamp(0, 1).cpu()


def _device_for(cfg: Any) -> torch.device:
    """The run's device where this machine has it (a CUDA run is viewed on the CPU without a GPU)."""
    from ..components import resolve_device

    name = str(cfg.device)
    if name.startswith("cuda") and not torch.cuda.is_available():
        return torch.device("cpu")
    return resolve_device(name)


def view_run(run_dir: str | Path, host: str = "127.0.0.1", port: int = 8080, resolution: int = 0,
             duration: Optional[float] = None) -> None:
    """Serve the viewer for ``run_dir`` until Ctrl-C (or for ``duration`` seconds)."""
    from ..components import eval_cameras
    from ..report.metrics import read_metrics
    from ..run import export_run, load_run
    from .live import viewer_resolution

    if not 0 <= int(port) <= 65535:
        raise DreamkitError(f"--port {port}: use a port in 1 … 65535 (0 = any free port)")
    if int(resolution) != 0 and not 16 <= int(resolution) <= 4096:
        raise DreamkitError(f"--resolution {resolution}: use 16 … 4096 pixels (0 = auto)")
    run_dir, cfg, ckpt = load_run(run_dir)
    import_viser()  # a missing extra fails before any loading
    device = _device_for(cfg)
    run = _LoadedRun(run_dir, cfg, ckpt, device)
    run.refresh()
    resolution = viewer_resolution(resolution, device)
    server = ViewerServer(f"{cfg.prompt} — {cfg.name} ({run_dir.name})", host, port, resolution,
                          eval_cameras(cfg)[0:1], buttons=("export",),
                          dynamic=bool(getattr(run.model, "dynamic", False)))
    print(f"viewer: {server.url}  ({run_dir}, step {run.step}; Ctrl-C to stop)", flush=True)
    notes = [f"loaded the checkpoint of step {run.step}"]
    max_steps = int(cfg.trainer.max_steps)
    loss: Optional[float] = None
    t_start = time.perf_counter()
    next_poll = next_status = 0.0
    try:
        while duration is None or time.perf_counter() - t_start < duration:
            now = time.perf_counter()
            if now >= next_poll:
                next_poll = now + POLL_SECONDS
                if run.refresh():
                    notes.append(f"loaded the checkpoint of step {run.step}")
                metrics = read_metrics(run_dir)
                if "train/loss" in metrics:
                    steps, values = metrics["train/loss"]
                    loss = values[-1]
                    server.plot(steps, values)
            if "export" in server.take_requests():
                out = run_dir / "exports" / f"step_{run.step:06d}"
                formats = list(cfg.export.formats) + (["mp4"] if cfg.export.turntable else [])
                notes.append(f"exporting step {run.step} …")
                server.show(ViewerStatus(step=run.step, max_steps=max_steps, loss=loss, state="exporting",
                                         notes=notes))
                try:
                    written = export_run(run_dir, formats, out_dir=out)
                    notes.append(f"step {run.step}: wrote " + ", ".join(p.name for p in written)
                                 + f" in exports/{out.name}")
                except DreamkitError as err:
                    notes.append(f"export failed: {err}")
                    print(f"viewer: export failed: {err}", flush=True)
            if server.pending(run.step):
                server.render_pending(run.render, run.step)
            if now >= next_status:
                next_status = now + 0.5
                state = "finished" if run.step >= max_steps else "checkpoint"
                server.show(ViewerStatus(step=run.step, max_steps=max_steps, loss=loss, state=state, notes=notes))
            time.sleep(0.03)
    finally:
        server.close()
