"""Lightning callbacks: atomic checkpoints, validation renders, a plain-text progress line for non-terminals."""
from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytorch_lightning as pl
import torch

from .imageio_utils import save_image_grid

#: set by a process that runs fits on behalf of another (a ``dreamkit batch`` / ``eval --jobs`` worker,
#: dreamkit.engine) to stop the fit it is running as Ctrl-C would: checkpoint, then stop
STOP_REQUESTED = threading.Event()


class AtomicCheckpoint(pl.Callback):
    """Every N steps (and at the end) write ``ckpts/last.ckpt`` atomically: save to a temporary file, fsync, rename.

    A run killed at any moment leaves either the previous or the new checkpoint, never a torn one.
    """

    def __init__(self, ckpt_dir: Path, every: int, max_steps: int):
        self.ckpt_dir = Path(ckpt_dir)
        self.every = every
        self.max_steps = max_steps
        self.last_saved_step = -1

    def save(self, trainer: pl.Trainer) -> Path:
        """Write ``last.ckpt`` atomically. A failed write (full disk, unwritable folder) removes its temporary file,
        keeps the previous checkpoint, and raises DreamkitError naming the folder and the cause."""
        final = self.ckpt_dir / "last.ckpt"
        tmp = self.ckpt_dir / f".last.ckpt.tmp-{os.getpid()}"
        if not trainer.is_global_zero:  # a fit in several processes: every rank takes part, rank zero writes
            trainer.save_checkpoint(str(tmp))
            self.last_saved_step = int(trainer.global_step)
            return final
        try:
            self.ckpt_dir.mkdir(parents=True, exist_ok=True)
            trainer.save_checkpoint(str(tmp))
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            os.replace(tmp, final)
        except OSError as err:
            tmp.unlink(missing_ok=True)
            from .errors import DreamkitError

            kept = f"the previous checkpoint ({final}) is kept" if final.is_file() else "no checkpoint was kept"
            raise DreamkitError(f"cannot write a checkpoint in {self.ckpt_dir}: {err.strerror or err} — {kept}; free "
                                "space or make the folder writable, then resume") from None
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        self.last_saved_step = int(trainer.global_step)
        return final

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step  # steps completed
        if (self.every > 0 and step % self.every == 0) or step >= self.max_steps:
            self.save(trainer)


class ValidationRenders(pl.Callback):
    """Renders the held-out orbit every N steps into ``renders/step_XXXXXX.png`` (and logs PSNR when targets exist)."""

    def __init__(self, out_dir: Path, every: int, max_steps: int, cameras, targets: torch.Tensor | None = None):
        self.out_dir = Path(out_dir)
        self.every = every
        self.max_steps = max_steps
        self.cameras = cameras
        self.targets = targets

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if not trainer.is_global_zero:  # rank zero renders (a fit in several processes)
            return
        if (self.every > 0 and step % self.every == 0) or step >= self.max_steps:
            images = pl_module.render_views(self.cameras, step=step)
            self.out_dir.mkdir(parents=True, exist_ok=True)
            save_image_grid(images, self.out_dir / f"step_{step:06d}.png")
            if self.targets is not None:
                psnr = psnr_db(images, self.targets)
                pl_module.val_psnr = psnr
                for logger in trainer.loggers:
                    logger.log_metrics({"val/psnr": psnr}, step=step)


def psnr_db(images: torch.Tensor, targets: torch.Tensor) -> float:
    """Mean over views of the per-view PSNR (dB), images in [0, 1]."""
    mse = ((images.float() - targets.float()) ** 2).flatten(1).mean(1).clamp_min(1e-10)
    return float((-10 * torch.log10(mse)).mean())


class TextProgress(pl.Callback):
    """One line every N steps with loss, steps/s and ETA — for logs, CI and terminals without the rich bar."""

    def __init__(self, every: int, max_steps: int, stream=None):
        self.every = max(1, every)
        self.max_steps = max_steps
        self.stream = stream or sys.stdout
        self.t0 = None
        self.step0 = 0

    def on_train_start(self, trainer, pl_module) -> None:
        self.t0 = time.perf_counter()
        self.step0 = trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if (step % self.every and step < self.max_steps) or not trainer.is_global_zero:
            return
        elapsed = time.perf_counter() - self.t0
        done = max(step - self.step0, 1)
        rate = done / max(elapsed, 1e-9)
        eta = (self.max_steps - step) / rate if rate > 0 else float("inf")
        if isinstance(outputs, dict):
            outputs = outputs.get("loss")
        loss = outputs.item() if torch.is_tensor(outputs) else float("nan")
        n = getattr(pl_module.representation, "num_gaussians", None)
        extra = f"  gaussians {n}" if n is not None else ""
        print(f"step {step}/{self.max_steps}  loss {loss:.4g}  {rate:.2f} steps/s  ETA {eta:.0f}s{extra}",
              file=self.stream, flush=True)


class GracefulStop(pl.Callback):
    """SIGINT (Ctrl-C) and SIGTERM (schedulers, ``kill``) end a fit cleanly: the step in flight finishes, a checkpoint
    is written, training stops, and :func:`dreamkit.run.fit` reports the interruption (one line, exit 130 / 143).

    The handlers are installed when training starts, over Lightning's own (which would exit 0 on SIGTERM, and 1 with
    no checkpoint on Ctrl-C), and the previous handlers come back when :meth:`restore` is called. A second signal
    while the checkpoint is being written ends the process at once (the last complete checkpoint stays).
    :data:`STOP_REQUESTED` (a batch worker asked to stop) counts as Ctrl-C. In a fit of several processes every rank
    stops at the same step (the decision is all-reduced each step; checkpointing is collective).
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, checkpoint: AtomicCheckpoint):
        self.checkpoint = checkpoint
        self.signum: int | None = None
        # the handlers before the fit (Lightning installs and later restores its own in between)
        self._previous = {sig: signal.getsignal(sig) for sig in self.SIGNALS}

    def _handler(self, signum, frame) -> None:
        if self.signum is not None:
            print(f"\ninterrupted again ({signal.Signals(signum).name}) — stopping now; the last complete "
                  "checkpoint is kept", file=sys.stderr, flush=True)
            os._exit(128 + signum)
        self.signum = signum

    @staticmethod
    def _can_handle() -> bool:
        """Python delivers signals to the main thread only; a fit in a worker thread keeps its defaults."""
        return threading.current_thread() is threading.main_thread()

    def install(self) -> None:
        if self._can_handle():
            for sig in self._previous:
                signal.signal(sig, self._handler)

    def restore(self) -> None:
        if self._can_handle():
            for sig, handler in self._previous.items():
                signal.signal(sig, handler if handler is not None else signal.SIG_DFL)

    def on_train_start(self, trainer, pl_module) -> None:
        self.install()  # after Lightning registered its SIGTERM handler at the start of fit

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.signum is None and STOP_REQUESTED.is_set():
            self.signum = signal.SIGINT
        if trainer.world_size > 1:  # every rank stops at the same step (checkpointing is collective)
            from .distributed import reduce_any

            if reduce_any(self.signum is not None) and self.signum is None:
                self.signum = signal.SIGTERM  # another rank was asked to stop
        if self.signum is None:
            return
        if self.checkpoint.last_saved_step != trainer.global_step:
            self.checkpoint.save(trainer)
        trainer.should_stop = True
