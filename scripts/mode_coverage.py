"""How many modes do SDS and VSD cover? An exact answer with the oracle prior.

The oracle prior holds two targets under one label ("an object": by default a red cube and a blue sphere from the tiny
world; ``--targets sphere:red sphere:blue`` gives two modes that a sphere-initialised particle starts equally far from),
so the distribution it scores is exactly a two-mode mixture. For each seed, one run fits 4 Gaussian particles:

* ``sds``: 4 independent SDS fits in one run (particles share nothing; SDS has no φ);
* ``vsd``: 4 particles sharing VSD's φ (for the oracle, its exact ε̂ plus a small trainable ε-network).

Each particle is rendered at the recipe's 8 held-out cameras and assigned to the target it is nearest to (mean
squared error over the views); it *covers* that target when its PSNR to it reaches ``--psnr`` dB. The script writes
``results.csv`` (one row per particle), ``results.md`` (modes covered per run) and ``modes.png`` (a row per run: the
two targets, then the four particles, one held-out view each).

    python scripts/mode_coverage.py --out benchmarks/2026-12-04/oracle_modes          # 2 methods × 4 seeds
"""
from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

LABEL = "an object"
TARGETS = [("cube", "red"), ("sphere", "blue")]  # (shape, colour) of target 0 and 1; --targets changes them

RECIPE = """# written by scripts/mode_coverage.py
base: gs_oracle.yaml
name: modes_{method}
prompt: {label}
particles: 4
prior:
  targets:
    - {{mesh: {mesh0}, label: {label}}}
    - {{mesh: {mesh1}, label: {label}}}
  resolution: {res}
guidance:
  name: {method}
  guidance_scale: 1.0
{extra}
camera:
  width: {res}
  height: {res}
  batch_size: 1
loss:
{loss}
trainer:
  max_steps: {steps}
  val_every: 0
  checkpoint_every: 0
  progress: false
export:
  formats: []
  turntable: false
"""


def write_recipes(folder: Path, res: int, steps: int) -> dict[str, Path]:
    from dreamkit.world.scenes import single_scene

    meshes = []
    for shape, colour in TARGETS:
        path = folder / f"{colour}_{shape}.ply"
        if not path.is_file():
            single_scene(shape, colour).export(path)
        meshes.append(path)
    recipes = {}
    for method in ("sds", "vsd"):
        extra = "  lr_lora: 0.001\n  camera_dropout: 0.1" if method == "vsd" else ""
        loss = "  lambda_vsd: 1.0\n  lambda_lora: 1.0" if method == "vsd" else "  lambda_sds: 1.0"
        text = RECIPE.format(method=method, label=LABEL, mesh0=meshes[0], mesh1=meshes[1], res=res, extra=extra,
                             loss=loss, steps=steps)
        path = folder / f"modes_{method}.yaml"
        path.write_text(text)
        recipes[method] = path
    return recipes


def judge(run_dir: Path, psnr_threshold: float) -> tuple[list[dict], torch.Tensor, torch.Tensor]:
    """Per particle: nearest target, PSNR to each target; and the renders [P, V, H, W, 3], targets [K, V, H, W, 3]."""
    from dreamkit.components import eval_cameras, load_representation_from_checkpoint
    from dreamkit.priors.configs import build_prior
    from dreamkit.run import load_run

    _, cfg, ckpt = load_run(run_dir)
    particles = load_representation_from_checkpoint(cfg, ckpt, torch.device("cpu"), all_particles=True)
    prior = build_prior(cfg.prior, torch.device("cpu"))
    cams = eval_cameras(cfg)
    background = torch.tensor(list(cfg.background.color)).expand(len(cams), 3)
    targets = torch.stack([prior.target_images(cams, k).permute(0, 2, 3, 1) for k in range(prior.num_targets)])
    renders = []
    rows = []
    with torch.no_grad():
        for i, member in enumerate(particles.members):
            rgb = member.render(cams, background=background).rgb.clamp(0, 1)
            renders.append(rgb)
            mse = ((rgb[None] - targets) ** 2).flatten(1).mean(1)
            psnr = (-10 * torch.log10(mse.clamp_min(1e-10))).tolist()
            nearest = int(torch.argmin(mse))
            rows.append({"particle": i, "nearest": f"{TARGETS[nearest][1]} {TARGETS[nearest][0]}",
                         "psnr_0": round(psnr[0], 2), "psnr_1": round(psnr[1], 2),
                         "covers": nearest if psnr[nearest] >= psnr_threshold else -1})
    return rows, torch.stack(renders), targets


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    parser.add_argument("--methods", nargs="+", default=["sds", "vsd"], choices=["sds", "vsd"])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--psnr", type=float, default=18.0, help="a particle covers its nearest target at this PSNR")
    parser.add_argument("--view", type=int, default=1, help="held-out view shown in modes.png")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: beside other work)")
    parser.add_argument("--targets", nargs=2, default=["cube:red", "sphere:blue"], metavar="SHAPE:COLOUR")
    parser.add_argument("--sds", nargs="*", default=[], metavar="KEY=VALUE", help="overrides of the SDS runs")
    parser.add_argument("--vsd", nargs="*", default=[], metavar="KEY=VALUE", help="overrides of the VSD runs")
    args = parser.parse_args(argv)
    TARGETS[:] = [tuple(t.split(":", 1)) for t in args.targets]
    torch.set_num_threads(max(1, args.threads))

    from dreamkit.config import load_config
    from dreamkit.imageio_utils import save_image_grid
    from dreamkit.run import fit

    args.out.mkdir(parents=True, exist_ok=True)
    recipes = write_recipes(args.out, args.resolution, args.steps)
    table, tiles, summary = [], [], []
    for method in args.methods:
        for seed in args.seeds:
            cfg = load_config(str(recipes[method]), [f"seed={seed}", f"output_dir={args.out / 'runs'}",
                                                     *getattr(args, method)])
            start = time.time()
            run_dir = fit(cfg, export=False)
            seconds = time.time() - start
            rows, renders, targets = judge(run_dir, args.psnr)
            covered = sorted({r["covers"] for r in rows if r["covers"] >= 0})
            summary.append({"method": method, "seed": seed, "modes_covered": len(covered),
                            "particles_per_mode": " / ".join(str(sum(r["covers"] == k for r in rows))
                                                             for k in range(len(TARGETS))),
                            "unassigned": sum(r["covers"] < 0 for r in rows), "fit_s": round(seconds, 1)})
            for r in rows:
                table.append({"method": method, "seed": seed, **r, "run_dir": str(run_dir)})
            v = args.view % renders.shape[1]
            tiles += [targets[0, v], targets[1, v]] + [renders[i, v] for i in range(renders.shape[0])]
            print(f"{method} seed {seed}: modes covered {len(covered)} ({summary[-1]['particles_per_mode']} "
                  f"particles per mode, {summary[-1]['unassigned']} unassigned) in {seconds:.0f}s", flush=True)
    with open(args.out / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(table[0]))
        writer.writeheader()
        writer.writerows(table)
    extra = "".join(f" --{m} {' '.join(getattr(args, m))}" for m in ("sds", "vsd") if getattr(args, m))
    lines = ["# Mode coverage: SDS and VSD against the oracle's two-target mixture", "",
             f"`python scripts/mode_coverage.py --out {args.out} --steps {args.steps} --resolution {args.resolution}"
             f" --seeds {' '.join(map(str, args.seeds))} --targets {' '.join(args.targets)}{extra}`",
             "", f"Targets under one label ({LABEL!r}): {', '.join(f'{c} {s}' for s, c in TARGETS)}. 4 particles per "
             f"run; a particle covers its nearest target at ≥ {args.psnr} dB PSNR over 8 held-out views.", "",
             f"| method | seed | modes covered (of 2) | particles per mode ({' / '.join(f'{c} {s}' for s, c in TARGETS)})"
             " | unassigned | fit s |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {s['method']} | {s['seed']} | {s['modes_covered']} | {s['particles_per_mode']} | {s['unassigned']} "
              f"| {s['fit_s']} |" for s in summary]
    for method in args.methods:
        mine = [s for s in summary if s["method"] == method]
        lines.append(f"\n{method}: mean modes covered {sum(s['modes_covered'] for s in mine) / len(mine):.2f} over "
                     f"{len(mine)} seeds")
    lines += ["", "`modes.png`: a row per run (methods in order, seeds in order): the two targets, then the four "
              "particles, one held-out view each."]
    (args.out / "results.md").write_text("\n".join(lines) + "\n")
    grid = torch.stack(tiles).permute(0, 3, 1, 2)
    grid = torch.nn.functional.interpolate(grid, scale_factor=4, mode="nearest").permute(0, 2, 3, 1)
    save_image_grid(grid, args.out / "modes.png", columns=2 + renders.shape[0])
    print((args.out / "results.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
