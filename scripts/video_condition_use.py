"""Does a video prior use the motion and the frame times? x̂₀ error on training clips with the true condition, with
the motion swapped (left ↔ right, up ↔ down, growing ↔ shrinking) and with the frame times reversed, per noise band.

    python scripts/video_condition_use.py W [--clips 48] [--seed 0]

W is a training run's work folder (``scripts/train_tiny_prior.py --video --work W``): its checkpoint's EMA weights are
probed (as ``scripts/video_motion_probe.py`` does), on clips of its own data (``W/data``, the last shard, clips of the
motions that a swap or a reversal changes). A prior that uses its condition predicts the clean clip better with the
true one: the "gain" columns are the error with the wrong condition over the error with the true one, minus 1 (0% =
the condition is not used). The analogue of ``scripts/camera_use.py`` for the camera of the image prior.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

SWAPS = {"moving left": "moving right", "moving right": "moving left", "moving up": "moving down",
         "moving down": "moving up", "growing": "shrinking", "shrinking": "growing"}
BANDS = {"t 800–999": (800, 1000), "t 500–800": (500, 800), "t 200–500": (200, 500)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("work", type=Path)
    p.add_argument("--clips", type=int, default=48)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from video_motion_probe import from_checkpoint

    from dreamkit.cameras import cameras_from_spherical
    from dreamkit.priors.pixel import PixelDiffusionPrior

    prior = PixelDiffusionPrior(str(from_checkpoint(args.work)), warn_outside_world=False)
    abar = prior.alphas_cumprod
    if prior.frames < 2:
        raise SystemExit(f"{args.work}: not a video prior")
    data = args.work / "data"
    meta = json.loads((data / "captions.json").read_text())
    motions, captions = meta["motions"], meta["captions"]
    shard = torch.load(sorted(data.glob("shard_*.pt"))[-1], weights_only=True)
    picked = [i for i in range(shard["images"].shape[0]) if motions[int(shard["motion"][i])] in SWAPS][: args.clips]
    gen = torch.Generator().manual_seed(args.seed)
    frames, size = prior.frames, prior.resolution
    clips = []  # per clip: x0, and (condition name, text embedding, cameras with the frame times) for each condition
    for i in picked:
        caption = captions[int(shard["caption"][i])]
        motion = motions[int(shard["motion"][i])]
        swapped = caption[: -len(motion)] + SWAPS[motion]
        text = prior.encode_text([caption, swapped]).cond.repeat_interleave(frames, 0)
        still = {k: shard[k][i].repeat(frames) for k in ("elevation", "azimuth", "distance", "fovy")}
        time = shard["time"][i]
        conditions = [(name, text[j * frames:(j + 1) * frames],
                       cameras_from_spherical(**still, width=size, height=size, time=tau))
                      for name, j, tau in (("true", 0, time), ("swapped motion", 1, time),
                                           ("reversed time", 0, time.flip(0)))]
        clips.append((shard["images"][i].permute(0, 3, 1, 2).float() / 127.5 - 1, conditions))
    rows = []
    for band, (lo, hi) in BANDS.items():
        err = {"true": 0.0, "swapped motion": 0.0, "reversed time": 0.0}
        for x0, conditions in clips:
            t = torch.randint(lo, hi, (1,), generator=gen).repeat(frames)
            eps = torch.randn(x0.shape, generator=gen)
            a = abar[t].view(-1, 1, 1, 1)
            x_t = a.sqrt() * x0 + (1 - a).sqrt() * eps
            for name, cond, cams in conditions:
                with torch.no_grad():  # the raw output (x̂₀ from ε̂ would divide by √ᾱ ≈ 0 at t ≈ 999)
                    out = prior._unet_output(x_t, t, cond, cams, torch.float32)
                if prior.prediction_type == "v_prediction":
                    x0_hat = a.sqrt() * x_t - (1 - a).sqrt() * out
                else:
                    x0_hat = (x_t - (1 - a).sqrt() * out) / a.sqrt()
                err[name] += float(((x0_hat - x0) ** 2).mean()) / len(clips)
        rows.append((band, err))
    print(f"x̂₀ error on {len(picked)} clips of {data} ({', '.join(sorted({m for m in SWAPS}))}):")
    print("| noise | true condition | swapped motion | gain | reversed time | gain |")
    print("|---|---|---|---|---|---|")
    for band, err in rows:
        g1 = err["swapped motion"] / err["true"] - 1
        g2 = err["reversed time"] / err["true"] - 1
        print(f"| {band} | {err['true']:.4f} | {err['swapped motion']:.4f} | {g1:+.1%} | {err['reversed time']:.4f} "
              f"| {g2:+.1%} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
