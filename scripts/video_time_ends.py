"""Where a video prior draws the object at the ends of the clip time: clips of "<object> moving left/right" sampled
with frame times τ₀ + i/F for τ₀ = 0, 1/(2F) and 1/F (the last reaches τ = 1), and the object's mean pixel centroid
x per frame (4 clips each, seed 0, DDIM 20, guidance 5, camera at the world's front).

A prior whose time condition is periodic in τ with period 1 (tiny-video's [sin, cos](2πkτ)) gets one input at τ = 0
and τ = 1; this shows what it draws there.

    python scripts/video_time_ends.py [PRIOR] [--threads 1]
"""
from __future__ import annotations

import argparse

import torch


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("prior", nargs="?", default="tiny-video")
    p.add_argument("--clips", type=int, default=4)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    from dreamkit.eval.clip_motion import track
    from dreamkit.priors.pixel import PixelDiffusionPrior
    from dreamkit.priors.sampling import ddim_sample_clips

    prior = PixelDiffusionPrior(args.prior, warn_outside_world=False)
    frames = int(prior.frames)
    if frames < 2:
        raise SystemExit(f"{args.prior} is not a video prior (frames = {frames})")
    print(f"| prompt | τ₀ | frame times | centroid x (px) per frame, mean of {args.clips} clips |\n|---|---|---|---|")
    for prompt, colour in [("a red cube moving left", "red"), ("a blue sphere moving right", "blue")]:
        for tau0 in [0.0, 0.5 / frames, 1.0 / frames]:
            clips = ddim_sample_clips(prior, [prompt] * args.clips, steps=20, guidance_scale=5.0, tau0=tau0,
                                      generator=torch.Generator().manual_seed(0))
            cx = torch.stack([track(clip, colour)["x"] for clip in clips]).nanmean(0)
            print(f"| {prompt} | {tau0:.4f} | {tau0:.3f} … {tau0 + (frames - 1) / frames:.3f} | "
                  + " ".join(f"{v:.1f}" for v in cx.tolist()) + " |", flush=True)


if __name__ == "__main__":
    main()
