"""A run's Gaussians/field seen from six views (elevations 60, 30, 0, −30, 89, 0): for each, the render on the
recipe's background, its alpha, and alpha ≥ 0.5 (what the hull export keeps), side by side in one PNG. For finding
what a fit holds that its renders hide: matter coloured like the background shows in the alpha, not in the render.

    python scripts/inspect_alpha.py outputs/gs_sds/latest alpha.png [--resolution 128]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> int:
    import imageio.v3 as iio
    import numpy as np
    import torch

    from dreamkit.cameras import cameras_from_spherical
    from dreamkit.components import load_representation_from_checkpoint
    from dreamkit.run import load_run

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--resolution", type=int, default=128)
    parser.add_argument("--threshold", type=float, default=0.5, help="the hull's alpha (export.mesh_hull_alpha)")
    args = parser.parse_args(argv)
    _, cfg, ckpt = load_run(args.run)
    rep = load_representation_from_checkpoint(cfg, ckpt, torch.device("cpu"))
    bg = torch.tensor(list(cfg.background.color), dtype=torch.float32).view(1, 3)
    rows = []
    for el, az in ((60, 0), (30, 45), (0, 90), (-30, 0), (89, 0), (0, 0)):
        cam = cameras_from_spherical(torch.tensor([float(el)]), torch.tensor([float(az)]),
                                     torch.tensor([float(cfg.camera.eval_distance)]),
                                     torch.tensor([40.0]), args.resolution, args.resolution)
        with torch.no_grad():
            out = rep.render(cam, background=bg)
        rgb = out.rgb[0].clamp(0, 1).numpy()
        alpha = out.alpha[0, ..., 0].numpy()
        grey = np.repeat(alpha[..., None], 3, -1)
        rows.append(np.concatenate([rgb, grey, (grey >= args.threshold).astype(np.float32)], 1))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    iio.imwrite(args.out, (np.concatenate(rows, 0) * 255).round().astype(np.uint8))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
