"""Render a captioned image dataset of the tiny world (seeded: the same bytes on every run).

    python scripts/make_world_dataset.py OUT_DIR [--n-images 100000] [--seed 0] [--resolution 64] [--multiview]
        [--shard-size 8192] [--n-compositions 512] [--ssaa 1] [--threads 1] [--export-meshes]

Writes OUT_DIR/shard_*.pt and OUT_DIR/captions.json (format: dreamkit/world/README.md) and prints progress and
throughput. ``--export-meshes`` also writes every scene's ground-truth coloured mesh to OUT_DIR/meshes/<key>.ply.
One torch thread is the default: on a shared 2-core machine, intra-op threads on these small tensors are slower.
"""
from __future__ import annotations

import argparse
import sys
import time


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", help="output folder (created; shards inside are overwritten)")
    parser.add_argument("--n-images", type=int, default=100_000, help="number of images (default 100000)")
    parser.add_argument("--seed", type=int, default=0, help="seed of every random draw (default 0)")
    parser.add_argument("--resolution", type=int, default=64, help="image side in pixels (default 64)")
    parser.add_argument("--multiview", action="store_true", help="groups of 4 views 90° apart (MVDream style)")
    parser.add_argument("--shard-size", type=int, default=8192, help="images per shard (default 8192)")
    parser.add_argument("--n-compositions", type=int, default=512,
                        help="two-object compositions sampled into the scene list (default 512 of 8064)")
    parser.add_argument("--ssaa", type=int, default=1, help="supersampling factor (2 = antialiased, ~4x slower)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    parser.add_argument("--export-meshes", action="store_true", help="also write each scene's mesh as PLY")
    args = parser.parse_args(argv)
    if args.n_images <= 0 or args.resolution <= 0 or args.shard_size <= 0:
        print("error: --n-images, --resolution and --shard-size must be positive", file=sys.stderr)
        return 2

    from dreamkit.world.dataset import build_dataset, dataset_scenes

    def progress(done: int, total: int, rate: float) -> None:
        eta = (total - done) / max(rate, 1e-9)
        print(f"{done}/{total} images  {rate:.0f} img/s  ETA {eta:.0f} s", flush=True)

    start = time.perf_counter()
    result = build_dataset(args.out_dir, args.n_images, seed=args.seed, resolution=args.resolution,
                           multiview=args.multiview, shard_size=args.shard_size,
                           n_compositions=args.n_compositions, ssaa=args.ssaa, progress=progress,
                           num_threads=args.threads)
    print(f"wrote {result['n_images']} images of {len(result['scenes'])} scenes "
          f"({len(result['captions'])} captions) in {len(result['shards'])} shards to {args.out_dir}: "
          f"{result['seconds']:.1f} s rendering, {result['images_per_second']:.0f} img/s "
          f"({time.perf_counter() - start:.1f} s total)")
    if args.export_meshes:
        from pathlib import Path

        mesh_dir = Path(args.out_dir) / "meshes"
        for scene in dataset_scenes(args.n_compositions, args.seed):
            scene.export(mesh_dir / (scene.key.replace("/", "__") + ".ply"))
        print(f"wrote meshes to {mesh_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
