"""The Lightning-free helpers that build a run's parts: device, held-out cameras, the representation and a trained
representation (or background) from a checkpoint. ``dreamkit export``/``render``/``eval --rescore`` need only these,
so they start without importing PyTorch Lightning (several seconds); :mod:`dreamkit.system` re-exports them.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import torch
from omegaconf import DictConfig
from torch import nn

from .cameras import Cameras, orbit_cameras
from .errors import ConfigError
from .registry import component_class

__all__ = ["resolve_device", "configure_device", "eval_cameras", "build_representation",
           "load_representation_from_checkpoint", "background_from_checkpoint"]


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={name} but no CUDA GPU is visible — use device=cpu (or auto)")
    return torch.device(name)


def configure_device(cfg: Any, device: torch.device) -> None:
    """Process-wide settings for a run on ``device`` (``dreamkit fit`` and ``dreamkit bench`` alike): on CUDA the
    float32 matmul precision and cuDNN autotuning (``trainer.cudnn_benchmark``); on the CPU, keeping freed memory
    mapped for the splatting twin's large temporaries."""
    if device.type == "cuda":
        from .priors.base import resolve_auto

        torch.set_float32_matmul_precision(str(cfg.trainer.matmul_precision))
        torch.backends.cudnn.benchmark = resolve_auto(cfg.trainer.cudnn_benchmark, True, "trainer.cudnn_benchmark")
    else:
        from .render.splat import keep_freed_cpu_memory

        keep_freed_cpu_memory()  # the CPU twin reallocates large temporaries every step; keep them mapped


def eval_cameras(cfg: Any, width: Optional[int] = None, height: Optional[int] = None) -> Cameras:
    """Held-out cameras: an orbit whose azimuths are offset from multiples of 45°; never sampled exactly in training."""
    cam = cfg.camera
    return orbit_cameras(cam.eval_views, width or cam.width, height or cam.height, elevation=cam.eval_elevation,
                         distance=cam.eval_distance, fovy=cam.eval_fovy, start_azimuth=cam.eval_azimuth_offset)


def build_representation(cfg: Any, generator: Optional[torch.Generator] = None) -> nn.Module:
    cls = component_class("representation", cfg.representation.name, "representation.name")
    return cls(cfg.representation, generator=generator)


def load_representation_from_checkpoint(cfg: DictConfig, ckpt_path: Path, device: torch.device) -> nn.Module:
    """Rebuild the trained representation (no prior needed) for export and rendering; the checkpoint is read with
    :func:`dreamkit.checkpoint.load_checkpoint` (no code in it runs; a bad file is one line)."""
    from .checkpoint import CheckpointError, load_checkpoint

    ckpt = load_checkpoint(ckpt_path)
    rep = build_representation(cfg)
    state = {k[len("representation."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("representation.")}
    prefix = "params."
    if hasattr(rep, "resize_to"):
        rep.resize_to({k[len(prefix):]: v.shape for k, v in state.items() if k.startswith(prefix)})
    try:
        rep.load_state_dict(state)
    except (RuntimeError, KeyError, ValueError) as err:
        first = " ".join(str(err).split())[:200]
        raise CheckpointError(f"checkpoint {ckpt_path} does not fit this run's representation "
                              f"({cfg.representation.name}): {first}") from None
    return rep.to(device).eval()


def background_from_checkpoint(cfg: DictConfig, ckpt_path: Path) -> torch.Tensor:
    from .checkpoint import load_checkpoint

    ckpt = load_checkpoint(ckpt_path)
    if cfg.background.type == "learned" and "background.learned" in ckpt["state_dict"]:
        return torch.sigmoid(ckpt["state_dict"]["background.learned"])
    return torch.tensor(list(cfg.background.color), dtype=torch.float32)
