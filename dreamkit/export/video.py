"""Turntable video of a representation: an orbit of cameras rendered over a solid background."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import torch

from ..cameras import orbit_cameras
from ..imageio_utils import save_image_grid, write_video


@torch.no_grad()
def render_turntable(model: Any, frames: int = 48, resolution: int = 128, elevation: float = 15.0,
                     distance: float = 2.75, fovy: float = 40.0, background: Optional[torch.Tensor] = None,
                     device: torch.device | str = "cpu", chunk: int = 8,
                     time_loop: Optional[bool] = None) -> torch.Tensor:
    """[frames, H, W, 3] in [0, 1]. A 4D model (``dynamic``; or ``time_loop=True``) moves through τ = 0 → 1 while
    the camera orbits once."""
    if time_loop is None:
        time_loop = bool(getattr(model, "dynamic", False))
    cams = orbit_cameras(frames, resolution, resolution, elevation=elevation, distance=distance, fovy=fovy,
                         time_loop=time_loop)
    bg = background if background is not None else torch.ones(3)
    out = []
    for start in range(0, frames, chunk):
        c = cams[start:start + chunk].to(device)
        out.append(model.render(c, background=bg.to(device).expand(len(c), 3)).rgb.clamp(0, 1).cpu())
    return torch.cat(out)


def export_turntable(model: Any, path: Path, export_cfg: Any = None, background: Optional[torch.Tensor] = None,
                     device: torch.device | str = "cpu", **_: Any) -> Path:
    """Writes ``path`` (MP4) and a preview PNG of 8 frames beside it."""
    kw = {}
    if export_cfg is not None:
        kw = dict(frames=int(export_cfg.turntable_frames), resolution=int(export_cfg.turntable_resolution),
                  elevation=float(export_cfg.turntable_elevation), distance=float(export_cfg.turntable_distance),
                  fovy=float(export_cfg.turntable_fovy))
    frames = render_turntable(model, background=background, device=device, **kw)
    fps = int(export_cfg.turntable_fps) if export_cfg is not None else 24
    path = write_video(frames, Path(path), fps=fps)
    step = max(1, frames.shape[0] // 8)
    save_image_grid(frames[::step][:8], Path(path).with_suffix(".png"), columns=4)
    return path
