"""How often the sample judge of ``dreamkit sample --score`` is right on the tiny world's own ground truth.

    python scripts/judge_accuracy.py [--per-scene 8] [--resolution 32] [--seed 123]

Renders every single-object scene of the world (8 shapes × 8 colours) ``--per-scene`` times from cameras drawn from
the ``dreamkit fit`` / dataset distribution with random lights (as the priors' training data, but a different seed),
and judges each render with :func:`dreamkit.eval.world_metrics.classify_sample`. A prior's samples cannot be judged
right more often than the truth itself is, so this is the ceiling of the sample bar; it prints the accuracy per shape
and the most common confusions, then judges ``--per-scene`` groups of 4 true views (90° apart) of each asymmetric
object with the multi-view judge (one object; front where the truth has it).
"""
from __future__ import annotations

import argparse
import sys
import time


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-scene", type=int, default=8, help="renders per scene (default 8)")
    parser.add_argument("--resolution", type=int, default=32, help="image side, as the tiny priors' samples (32)")
    parser.add_argument("--seed", type=int, default=123, help="seed of cameras and lights (default 123)")
    args = parser.parse_args(argv)
    if args.per_scene <= 0 or args.resolution <= 0:
        print("error: --per-scene and --resolution must be positive", file=sys.stderr)
        return 2

    import torch

    from dreamkit.eval.world_metrics import sample_judge_accuracy
    from dreamkit.world.dataset import render_scene_views

    t0 = time.time()
    gen = torch.Generator().manual_seed(args.seed)
    result = sample_judge_accuracy(args.per_scene, args.resolution, gen)
    right, total, confusions = result["right"], result["total"], result["confusions"]
    n, k = sum(total.values()), sum(right.values())
    print(f"judge right on {k}/{n} ground-truth renders ({100 * k / n:.1f}%), {args.resolution}×{args.resolution}, "
          f"seed {args.seed}, {time.time() - t0:.0f} s")
    for shape in total:
        print(f"  {shape:9s} {right[shape]:4d}/{total[shape]:<4d} {100 * right[shape] / total[shape]:5.1f}%")
    if confusions:
        print("most common confusions: " + "; ".join(f"{c} ×{m}" for c, m in confusions.most_common(8)))

    # the multi-view judge (dreamkit sample --score with a 4-view prior) on groups of 4 ground-truth views
    from dreamkit.eval.world_metrics import judge_multiview
    from dreamkit.world.dataset import sample_multiview_cameras
    from dreamkit.world.scenes import asymmetric_scenes

    for scene in asymmetric_scenes():
        cams = sample_multiview_cameras(args.per_scene, gen, args.resolution)
        images, _, _ = render_scene_views(scene, cams, generator=gen)
        rows = judge_multiview(images.permute(0, 3, 1, 2), cams, scene, 4)
        print(f"  multi-view judge, {scene.shapes[0]:8s} groups of 4 true views: one object "
              f"{sum(bool(r['consistent']) for r in rows)}/{len(rows)}, oriented "
              f"{sum(bool(r['oriented']) for r in rows)}/{len(rows)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
