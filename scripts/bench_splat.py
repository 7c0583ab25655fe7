"""Benchmark the torch Gaussian rasterizer (forward + backward) on scenes sized like score-distillation training.

    python scripts/bench_splat.py [--tile-sizes 4 8 16] [--repeats 10] [--keep-freed-memory]

A scene is an object of radius 0.6 made of N Gaussians (scales 0.02-0.05, opacities 0.05-0.95) seen by B random
cameras at distance 2.5-3 with a 40° vertical field of view. Times are the best of ``--repeats`` runs (the machine
may be shared), forward alone and forward + backward of a loss on rgb, alpha and depth.
"""
from __future__ import annotations

import argparse
import time

import torch

from dreamkit.cameras import cameras_from_spherical
from dreamkit.render.splat import default_tile_size, keep_freed_cpu_memory, rasterize_gaussians


def make_scene(n: int, batch: int, res: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    direction = torch.nn.functional.normalize(torch.randn(n, 3, generator=g), dim=-1)
    means = direction * 0.6 * torch.rand(n, 1, generator=g) ** (1 / 3)
    quats = torch.randn(n, 4, generator=g)
    scales = 0.02 + 0.03 * torch.rand(n, 3, generator=g)
    opacities = 0.05 + 0.9 * torch.rand(n, generator=g)
    colors = torch.rand(n, 3, generator=g)
    cams = cameras_from_spherical(
        elevation=-10 + 55 * torch.rand(batch, generator=g),
        azimuth=360 * torch.rand(batch, generator=g),
        distance=2.5 + 0.5 * torch.rand(batch, generator=g),
        fovy=torch.full((batch,), 40.0),
        width=res,
        height=res,
    )
    return means, quats, scales, opacities, colors, cams


def bench(n: int, batch: int, res: int, tile_size: int | None, repeats: int) -> tuple[float, float, int]:
    means, quats, scales, opacities, colors, cams = make_scene(n, batch, res)
    params = [t.requires_grad_() for t in (means, quats, scales, opacities, colors)]
    viewmats, Ks = cams.viewmats, cams.K
    bg = torch.ones(3)
    fwd_times, total_times = [], []
    n_pairs = 0
    for i in range(repeats + 1):
        for p in params:
            p.grad = None
        t0 = time.perf_counter()
        rgb, alpha, depth, meta = rasterize_gaussians(
            *params, viewmats, Ks, res, res, background=bg, tile_size=tile_size, backend="torch"
        )
        t1 = time.perf_counter()
        loss = (rgb * torch.linspace(0, 1, 3)).sum() + alpha.sum() + 0.1 * depth.sum()
        loss.backward()
        t2 = time.perf_counter()
        n_pairs = meta["n_pairs"]
        if i > 0:  # the first call warms up allocators
            fwd_times.append(t1 - t0)
            total_times.append(t2 - t0)
    return min(fwd_times), min(total_times), n_pairs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tile-sizes", type=int, nargs="*", default=None, help="tile sizes to compare (default: auto)")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--keep-freed-memory", action="store_true",
                        help="call dreamkit.render.splat.keep_freed_cpu_memory() first (fewer page faults)")
    args = parser.parse_args()
    if args.keep_freed_memory:
        print("keep_freed_cpu_memory:", keep_freed_cpu_memory())
    configs = [(2000, 4, 64), (5000, 4, 64), (5000, 1, 128), (20000, 1, 128), (20000, 4, 64)]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'N':>6} {'B':>2} {'res':>4} {'tile':>4} {'pairs':>8} {'fwd ms':>8} {'fwd+bwd ms':>10}")
    for n, batch, res in configs:
        for tile in args.tile_sizes or [None]:
            fwd, total, pairs = bench(n, batch, res, tile, args.repeats)
            shown = tile if tile is not None else default_tile_size(res, res)
            print(f"{n:>6} {batch:>2} {res:>4} {shown:>4} {pairs:>8} {1e3 * fwd:>8.1f} {1e3 * total:>10.1f}")


if __name__ == "__main__":
    main()
