"""The one way dreamkit reads a checkpoint: ``torch.load(..., weights_only=True)``, checked, with one-line errors.

Run folders are what users share (issue reports, "here is my asset"), so a checkpoint is untrusted input: PyTorch's
restricted unpickler (``weights_only=True``) loads tensors, numbers, strings and plain containers and refuses any
other object, so a planted checkpoint cannot run code. Everything dreamkit saves (Lightning's checkpoint dict, our
generator states, the config as plain containers) loads that way. Any failure — a file that is empty, truncated,
corrupt, not a checkpoint, or holding objects the restricted loader refuses — becomes :class:`CheckpointError`
naming the file.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .errors import DreamkitError

__all__ = ["CheckpointError", "load_checkpoint", "checkpoint_global_step"]


class CheckpointError(DreamkitError):
    """A checkpoint that cannot be read safely; the message names the file and what to do."""


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """The checkpoint at ``path`` as a dict (tensors on the CPU), read without running any code in it.

    Raises:
        CheckpointError: missing, empty, unreadable, refused by the restricted unpickler, or not a dreamkit
            checkpoint (no ``state_dict`` / ``global_step``).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes): the run was stopped while writing it, or the "
                              "file was truncated — use another copy of the run")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # UnpicklingError (refused globals), RuntimeError (zip/corrupt), EOFError, OSError, ...
        reason = " ".join(str(err).split())
        if "weights_only" in reason or "Unsupported global" in reason or "unsafe" in reason.lower():
            reason = ("it holds objects other than tensors and plain values, which dreamkit never saves "
                      f"(refused without running them: {reason[:160]})")
        else:
            reason = f"{type(err).__name__}: {reason[:200]}"
        raise CheckpointError(f"cannot read checkpoint {path}: {reason} — it is corrupt or not a dreamkit "
                              "checkpoint; use another copy of the run") from None
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), dict) or "global_step" not in ckpt:
        raise CheckpointError(f"{path} is not a dreamkit checkpoint (no state_dict / global_step)")
    return ckpt


def checkpoint_global_step(path: str | Path) -> int:
    """Steps completed by the checkpoint at ``path`` (raises CheckpointError like :func:`load_checkpoint`)."""
    step = load_checkpoint(path)["global_step"]
    if not isinstance(step, int) or step < 0:
        raise CheckpointError(f"{path} is not a dreamkit checkpoint (global_step={step!r})")
    return step
