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
    cams = orbit_cameras(cam.eval_views, width or cam.width, height or cam.height, elevation=cam.eval_elevation,
                         distance=cam.eval_distance, fovy=cam.eval_fovy, start_azimuth=cam.eval_azimuth_offset)
    if getattr(cam, "eval_time_sweep", False):  # 4D: the k-th view at time (k + 0.5)/n, between the clip-time grid
        n = int(cam.eval_views)
        cams.time = (torch.arange(n, dtype=torch.float32) + 0.5) / n
    return cams


def build_representation(cfg: Any, generator: Optional[torch.Generator] = None) -> nn.Module:
    """The recipe's representation; with ``particles`` N > 1 a :class:`Particles` of N members, initialised in turn
    from ``generator``."""
    cls = component_class("representation", cfg.representation.name, "representation.name")
    count = int(cfg.get("particles", 1) or 1)
    kwargs = {}
    if getattr(cfg.representation, "init", None) == "layout":  # the parts' boxes (Gaussians' init=layout)
        from .layout import resolve_layout

        kwargs["layout"] = resolve_layout(cfg)
    if count == 1:
        return cls(cfg.representation, generator=generator, **kwargs)
    from .representations.particles import Particles

    generator = generator if generator is not None else torch.Generator().manual_seed(int(cfg.get("seed", 0)))
    return Particles([cls(cfg.representation, generator=generator, **kwargs) for _ in range(count)])


def export_member(rep: nn.Module, cfg: Any) -> nn.Module:
    """The representation to export, render and score: with particles, member ``export.particle``."""
    from .representations.particles import Particles

    if isinstance(rep, Particles):
        return rep.members[int(cfg.export.get("particle", 0))]
    return rep


def load_representation_from_checkpoint(cfg: DictConfig, ckpt_path: Path, device: torch.device,
                                        all_particles: bool = False) -> nn.Module:
    """Rebuild the trained representation (no prior needed) for export and rendering; the checkpoint is read with
    :func:`dreamkit.checkpoint.load_checkpoint` (no code in it runs; a bad file is one line). With particles: member
    ``export.particle``, or all of them (a :class:`Particles`) with ``all_particles``."""
    from .checkpoint import CheckpointError, load_checkpoint
    from .representations.particles import resize_to_state

    ckpt = load_checkpoint(ckpt_path)
    rep = build_representation(cfg)
    state = {k[len("representation."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("representation.")}
    resize_to_state(rep, state)
    try:
        rep.load_state_dict(state)
    except (RuntimeError, KeyError, ValueError) as err:
        first = " ".join(str(err).split())[:200]
        raise CheckpointError(f"checkpoint {ckpt_path} does not fit this run's representation "
                              f"({cfg.representation.name}): {first}") from None
    rep = rep if all_particles else export_member(rep, cfg)
    return rep.to(device).eval()


def background_from_checkpoint(cfg: DictConfig, ckpt_path: Path) -> torch.Tensor:
    from .checkpoint import load_checkpoint

    ckpt = load_checkpoint(ckpt_path)
    if cfg.background.type == "learned" and "background.learned" in ckpt["state_dict"]:
        return torch.sigmoid(ckpt["state_dict"]["background.learned"])
    return torch.tensor(list(cfg.background.color), dtype=torch.float32)
