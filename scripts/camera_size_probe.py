#!/usr/bin/env python
"""Does a text-to-image prior draw world objects at the size the camera implies?

    python scripts/camera_size_probe.py assets/priors/tiny-t2i [other prior folders] --out DIR

For each prompt and each probe camera (the corners of the fit's camera distribution: near/narrow = the object looks
largest, far/wide = smallest, at elevation 0° and 45°) the prior draws ``--samples`` images (DDIM, its default CFG
scale); the truth is rendered at the same camera with the world's renderer. The foreground (pixels that differ from
the world's grey background) gives each image's silhouette height and width in pixels; the table reports
sample / truth for both, mean ± std over the samples. A prior that knows the camera scores ≈ 1 at every camera; a
camera-agnostic one draws one average size, so its ratio falls from the largest to the smallest view (the spread that
issue 27 blames for SDS fits of the wrong size).

Writes ``DIR/results.md`` (the table and this command) and ``DIR/<prior>_<prompt>.png`` (rows: cameras; the truth
first in each row).
"""
from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import torch

PROBE_CAMERAS = [  # (name, elevation °, distance, fovy °)
    ("near 35° el 0", 0.0, 2.5, 35.0),
    ("far 45° el 0", 0.0, 3.0, 45.0),
    ("near 35° el 45", 45.0, 2.5, 35.0),
    ("far 45° el 45", 45.0, 3.0, 45.0),
]


def silhouette(image: torch.Tensor, background: torch.Tensor, threshold: float = 0.08) -> tuple[float, float]:
    """(height, width) in pixels of the foreground's bounding box; image [3, H, W] in [0, 1]."""
    mask = (image - background[:, None, None]).abs().amax(0) > threshold
    if not mask.any():
        return 0.0, 0.0
    rows = mask.any(1).nonzero().flatten()
    cols = mask.any(0).nonzero().flatten()
    return float(rows[-1] - rows[0] + 1), float(cols[-1] - cols[0] + 1)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("priors", nargs="+", type=Path, help="prior folders (diffusers format, pixel space)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--prompts", nargs="+", default=["a red cube", "a blue sphere", "a green cylinder"])
    p.add_argument("--samples", type=int, default=8)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--guidance", type=float, default=None, help="CFG scale (default: the prior's own)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    from dreamkit.cameras import orbit_cameras, Cameras
    from dreamkit.imageio_utils import save_image_grid
    from dreamkit.priors.pixel import PixelDiffusionPrior
    from dreamkit.priors.sampling import ddim_sample
    from dreamkit.world import parse_prompt
    from dreamkit.world.dataset import DEFAULT_BACKGROUND, render_scene_views

    args.out.mkdir(parents=True, exist_ok=True)
    background = torch.tensor(DEFAULT_BACKGROUND, dtype=torch.float32)
    lines = ["# Camera size probe", "", "`python scripts/camera_size_probe.py "
             + " ".join(shlex.quote(a) for a in sys.argv[1:]) + "`", "",
             "sample / truth silhouette height and width (mean ± std over the samples); 1.00 = the truth's size", "",
             "| prior | prompt | camera | height ratio | width ratio | truth h×w (px) |", "|---|---|---|---|---|---|"]
    for folder in args.priors:
        prior = PixelDiffusionPrior(str(folder), device="cpu", warn_outside_world=False)
        res = int(prior.resolution)
        scale = args.guidance if args.guidance is not None else float(prior.sample_guidance_scale)
        for prompt in args.prompts:
            scene = parse_prompt(prompt)
            rows = []
            for name, elev, dist, fovy in PROBE_CAMERAS:
                cams = Cameras.cat([orbit_cameras(1, res, res, elevation=elev, distance=dist, fovy=fovy,
                                                  start_azimuth=30.0 + 360.0 * k / args.samples)
                                    for k in range(args.samples)])
                truth, _, _ = render_scene_views(scene, cams, ssaa=2)
                truth = truth.permute(0, 3, 1, 2)
                cams_in = cams if prior.view_settings.needs_cameras else None
                images = ddim_sample(prior, [prompt] * args.samples, steps=args.steps, guidance_scale=scale,
                                     cameras=cams_in, generator=torch.Generator().manual_seed(args.seed))
                h_ratio, w_ratio = [], []
                for img, tr in zip(images, truth):
                    (hs, ws), (ht, wt) = silhouette(img, background), silhouette(tr, background)
                    h_ratio.append(hs / max(ht, 1.0))
                    w_ratio.append(ws / max(wt, 1.0))
                hr, wr = torch.tensor(h_ratio), torch.tensor(w_ratio)
                th, tw = silhouette(truth[0], background)
                lines.append(f"| {folder.name} | {prompt} | {name} | {hr.mean():.2f} ± {hr.std():.2f} | "
                             f"{wr.mean():.2f} ± {wr.std():.2f} | {th:.0f}×{tw:.0f} |")
                print(lines[-1], flush=True)
                rows.append(torch.cat([truth[:1], images]))
            grid = torch.cat(rows).permute(0, 2, 3, 1)
            save_image_grid(grid, args.out / f"{folder.name}_{prompt.replace(' ', '_')}.png", columns=args.samples + 1)
    (args.out / "results.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out / 'results.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
