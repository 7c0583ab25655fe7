"""A 4D run's Gaussians over time: the opacity-weighted centroid of the deformed means at τ = 0, 1/(K−1), …, 1 and
a row of renders from the world's front camera (elevation 15°, distance 2.75, fovy 40°) at those times.

    python scripts/track4d.py RUN_DIR [--frames 8] [--out frames.png]

RUN_DIR: a `dreamkit fit` folder of a deformable-Gaussian recipe (gs4d_video.yaml, gs4d_oracle.yaml). What the eval
scores is the exported mesh moved by the field (`dreamkit.eval.motion`); this shows the Gaussians themselves, where a
track's lift or overshoot comes from.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", type=Path)
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--out", type=Path, default=None, help="PNG of the renders (one row)")
    args = p.parse_args(argv)

    from dreamkit.cameras import cameras_from_spherical
    from dreamkit.components import load_representation_from_checkpoint
    from dreamkit.imageio_utils import save_image_grid
    from dreamkit.run import load_run

    _, cfg, ckpt = load_run(args.run)
    model = load_representation_from_checkpoint(cfg, ckpt, torch.device("cpu"))
    if not hasattr(model, "deformed"):
        raise SystemExit(f"{args.run} is not a deformable-Gaussian run (representation {cfg.representation.name})")
    n = args.frames
    taus = torch.linspace(0, 1, n)
    with torch.no_grad():
        means = model.deformed(taus)["means"]  # [K, N, 3]
        opacity = model.opacities.reshape(-1)
        w = opacity / opacity.sum()
        centroids = (w[None, :, None] * means).sum(1)
        print("| τ | x | y | z |\n|---|---|---|---|")
        for tau, c in zip(taus.tolist(), centroids.tolist()):
            print(f"| {tau:.3f} | {c[0]:+.3f} | {c[1]:+.3f} | {c[2]:+.3f} |")
        if args.out is not None:
            cams = cameras_from_spherical(torch.full((n,), 15.0), torch.zeros(n), torch.full((n,), 2.75),
                                          torch.full((n,), 40.0), 64, 64, time=taus)
            bg = torch.tensor([0.9, 0.9, 0.9]).expand(n, 3)
            save_image_grid(model.render(cams, background=bg).rgb.clamp(0, 1), args.out, columns=n)
            print("wrote", args.out)


if __name__ == "__main__":
    main()
