"""Where a video prior draws the object in each frame: the mean pixel centroid (x, y) and the mask's top and bottom
rows per frame over N sampled clips of each prompt (DDIM 20, guidance 5, the world's front camera, frame times
τ₀ + i/F with τ₀ = 1/(2F), as `dreamkit sample` and the motion probe use; the object's mask as the probe finds it,
`dreamkit.eval.clip_motion.track`). Pixel rows grow downwards.

    python scripts/video_prompt_track.py [--prior tiny-video] [--clips 8] [--threads 2] "a red cube moving right" ...
"""
from __future__ import annotations

import argparse
import math

import torch


def mask_rows(mask: torch.Tensor) -> tuple[float, float]:
    """(top, bottom) row of a [H, W] mask (NaN when empty)."""
    rows = torch.nonzero(mask.any(1)).flatten()
    if rows.numel() == 0:
        return math.nan, math.nan
    return float(rows.min()), float(rows.max())


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("prompts", nargs="+", help="world motion prompts, e.g. 'a red cube moving right'")
    p.add_argument("--prior", default="tiny-video")
    p.add_argument("--clips", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    from dreamkit.eval.clip_motion import track
    from dreamkit.priors.pixel import PixelDiffusionPrior
    from dreamkit.priors.sampling import ddim_sample_clips
    from dreamkit.world.captions import parse_prompt
    from dreamkit.world.motion import split_motion_caption

    prior = PixelDiffusionPrior(args.prior, warn_outside_world=False)
    frames = int(prior.frames)
    if frames < 2:
        raise SystemExit(f"{args.prior} is not a video prior (frames = {frames})")
    print(f"| prompt | row | per frame, mean of {args.clips} clips (px) |\n|---|---|---|")
    for prompt in args.prompts:
        scene = parse_prompt(split_motion_caption(prompt)[0])
        colour = scene.colours[0] if scene is not None and len(scene.colours) == 1 else None
        clips = ddim_sample_clips(prior, [prompt] * args.clips, steps=20, guidance_scale=5.0,
                                  generator=torch.Generator().manual_seed(args.seed))
        tracks = [track(clip, colour) for clip in clips]
        rows = {"x": torch.stack([t["x"] for t in tracks]).nanmean(0),
                "y": torch.stack([t["y"] for t in tracks]).nanmean(0)}
        ends = torch.tensor([[mask_rows(m) for m in t["mask"]] for t in tracks])  # [N, F, 2]
        rows["top"], rows["bottom"] = ends[..., 0].nanmean(0), ends[..., 1].nanmean(0)
        for name, values in rows.items():
            print(f"| {prompt} | {name} | " + " ".join(f"{v:.1f}" for v in values.tolist()) + " |", flush=True)


if __name__ == "__main__":
    main()
