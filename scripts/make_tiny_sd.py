"""Write a tiny random Stable Diffusion pipeline (diffusers format, ~7 MB, about a second) for tests and demos.

    python scripts/make_tiny_sd.py FOLDER [--v-prediction] [--seed 0] [--sample-size 16]

Then ``dreamkit fit ... prior.name=FOLDER`` runs the real Stable Diffusion code path offline. The weights are random:
the prior checks plumbing, not quality. See dreamkit/priors/tiny_random.py.
"""
from __future__ import annotations

import argparse
import sys
import time


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", help="output folder (created; files inside are overwritten)")
    parser.add_argument("--v-prediction", action="store_true", help="v-prediction scheduler config (as SD 2.x 768-v)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights (default 0)")
    parser.add_argument("--sample-size", type=int, default=16,
                        help="UNet latent side; images are twice that (default 16 → 32 px)")
    args = parser.parse_args(argv)

    from dreamkit.priors.tiny_random import build_tiny_sd

    start = time.perf_counter()
    folder = build_tiny_sd(args.folder, prediction_type="v_prediction" if args.v_prediction else "epsilon",
                           seed=args.seed, sample_size=args.sample_size)
    size_mb = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 2 ** 20
    print(f"wrote {folder} ({size_mb:.1f} MB, {time.perf_counter() - start:.1f} s); "
          f"use it with prior.name={folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
