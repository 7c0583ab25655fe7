#!/usr/bin/env python
"""A run's turntable MP4 as a small looping GIF for the README (a 4D fit's turntable moves while it orbits).

    python scripts/make_turntable_gif.py <run folder> docs/img/4d_turntable.gif [--size 128] [--every 2]
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--size", type=int, default=128, help="side of the GIF's frames in pixels")
    parser.add_argument("--every", type=int, default=1, help="keep every N-th frame")
    parser.add_argument("--fps", type=float, default=12.0)
    args = parser.parse_args()
    import imageio.v3 as iio
    from PIL import Image

    videos = sorted((args.run / "exports").glob("turntable*.mp4"))
    if not videos:
        raise SystemExit(f"{args.run}/exports has no turntable*.mp4 — run `dreamkit render {args.run}` first")
    frames = [Image.fromarray(np.asarray(f)).resize((args.size, args.size), Image.LANCZOS)
              for f in iio.imiter(videos[0])][:: args.every]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    frames[0].save(args.out, save_all=True, append_images=frames[1:], duration=int(1000 / args.fps), loop=0,
                   optimize=True)
    print(f"wrote {args.out} ({len(frames)} frames, {args.out.stat().st_size // 1024} KB) from {videos[0]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
