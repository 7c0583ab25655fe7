#!/usr/bin/env python
"""Does a camera-aware prior use its cameras? Its x̂₀ error on world images with their own cameras vs shuffled ones.

    python scripts/camera_use.py PRIOR_FOLDER DATA_FOLDER [--images 256] [--seed 0]

DATA_FOLDER is a rendered world dataset (``<work>/data`` of scripts/train_tiny_prior.py, with ``captions.json`` and
the shards; it holds every image's camera). The same images, captions, timesteps and noise go through the UNet twice:
with each image's own camera, and with the cameras permuted across the batch. A prior that ignores its camera input
gives the same error both ways (gap 0%); the gap says how much of the image the camera explains, by noise level
(at high noise, where the object's size and placement are decided, is where it should show).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("prior", help="prior folder with a camera input (camera_input or a camera class embedding)")
    p.add_argument("data", type=Path, help="rendered world dataset folder (captions.json + shards)")
    p.add_argument("--images", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    from dreamkit.cameras import cameras_from_spherical
    from dreamkit.priors.pixel import PixelDiffusionPrior
    from dreamkit.world.dataset import load_shard

    prior = PixelDiffusionPrior(args.prior, device="cpu", warn_outside_world=False)
    vs = prior.view_settings
    if not vs.needs_cameras:
        raise SystemExit(f"{args.prior} takes no camera: nothing to measure")
    meta = json.loads((args.data / "captions.json").read_text())
    shards = [load_shard(args.data / s["file"]) for s in meta["shards"]]
    images = torch.cat([s["images"] for s in shards])
    captions = torch.cat([s["caption"] for s in shards])
    sph = {k: torch.cat([s[k] for s in shards]) for k in ("elevation", "azimuth", "distance", "fovy", "c2w")}
    if images.dim() != 4:
        raise SystemExit("multi-view datasets are not supported here (groups of views share a camera rig)")
    gen = torch.Generator().manual_seed(args.seed)
    n = args.images
    idx = torch.randint(0, len(images), (n,), generator=gen)
    x0 = images[idx].permute(0, 3, 1, 2).float() / 127.5 - 1
    cond = prior.encode_text([meta["captions"][i] for i in captions[idx].tolist()]).cond
    perm = torch.randperm(n, generator=gen)
    res = images.shape[1]
    own = cameras_from_spherical(*(sph[k][idx] for k in ("elevation", "azimuth", "distance", "fovy")), res, res)
    if not torch.allclose(own.c2w, sph["c2w"][idx], atol=1e-4):
        raise SystemExit("the dataset's cameras do not match cameras_from_spherical of their angles")
    shuffled = cameras_from_spherical(*(sph[k][idx][perm] for k in ("elevation", "azimuth", "distance", "fovy")),
                                      res, res)
    abar = prior.alphas_cumprod
    for lo, hi in [(0, 300), (300, 600), (600, 800), (800, 1000)]:
        t = torch.randint(lo, hi, (n,), generator=gen)
        noise = torch.randn(x0.shape, generator=gen)
        a = abar[t].view(-1, 1, 1, 1)
        x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise
        errors = []
        for cams in (own, shuffled):
            with torch.no_grad():
                out = prior.predict(x_t, t, cond, cams)  # ε̂ (converted from v for v-prediction priors)
            x0_hat = (x_t - (1 - a).sqrt() * out) / a.sqrt().clamp_min(1e-4)
            errors.append(((x0_hat.clamp(-1, 1) - x0) ** 2).mean().item())
        print(f"t in [{lo}, {hi}): x0 MSE with own cameras {errors[0]:.4f}, shuffled {errors[1]:.4f}, "
              f"gap {100 * (errors[1] / errors[0] - 1):+.1f}%", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
