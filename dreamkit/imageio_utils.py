"""Small image/video writing helpers (imageio; H.264 through imageio-ffmpeg's bundled ffmpeg)."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """[..., H, W, 3] float in [0, 1] → uint8 numpy."""
    return (images.detach().clamp(0, 1).cpu().numpy() * 255 + 0.5).astype(np.uint8)


def image_grid(images: torch.Tensor, columns: int | None = None) -> np.ndarray:
    """[B, H, W, 3] → one uint8 grid image."""
    b, h, w, c = images.shape
    columns = columns or min(b, int(math.ceil(math.sqrt(b))) if b > 4 else b)
    rows = int(math.ceil(b / columns))
    grid = np.full((rows * h, columns * w, c), 255, dtype=np.uint8)
    arr = to_uint8(images)
    for i in range(b):
        r, q = divmod(i, columns)
        grid[r * h:(r + 1) * h, q * w:(q + 1) * w] = arr[i]
    return grid


def save_image_grid(images: torch.Tensor, path: Path, columns: int | None = None) -> Path:
    import imageio.v2 as imageio

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    imageio.imwrite(path, image_grid(images, columns))
    return path


def write_video(frames: torch.Tensor, path: Path, fps: int = 24) -> Path:
    """[F, H, W, 3] in [0, 1] → H.264 MP4 (sizes padded to multiples of 16 by the encoder when needed).

    Raises DreamkitError when imageio-ffmpeg (a dependency of dreamkit) is missing: imageio would otherwise hand the
    ``.mp4`` to another plugin (tifffile) that fails with an unrelated TypeError. Seen on a GPU machine whose Python
    had imageio without imageio-ffmpeg."""
    import imageio.v2 as imageio

    try:
        import imageio_ffmpeg  # noqa: F401
    except ImportError as err:
        from .errors import DreamkitError

        raise DreamkitError(f"writing {Path(path).name} needs an H.264 encoder: imageio-ffmpeg is not installed "
                            f"({err}) — `pip install imageio-ffmpeg`, or skip videos with export.turntable=false "
                            "export.mesh_preview=false") from err
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = to_uint8(frames)
    writer = imageio.get_writer(str(path), fps=fps, codec="libx264", quality=8, macro_block_size=16,
                                ffmpeg_log_level="error")
    try:
        for frame in arr:
            writer.append_data(frame)
    finally:
        writer.close()
    return path


def unique_path(path: Path) -> Path:
    """``path`` if free, else ``stem-1.ext``, ``stem-2.ext`` … — outputs are never overwritten silently."""
    path = Path(path)
    if not path.exists():
        return path
    i = 1
    while True:
        candidate = path.with_name(f"{path.stem}-{i}{path.suffix}")
        if not candidate.exists():
            return candidate
        i += 1
