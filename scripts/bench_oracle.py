#!/usr/bin/env python
"""Benchmark of the oracle recipes: `dreamkit fit --config <recipe>.yaml` (gs_oracle, nerf_oracle, triplane_oracle),
timed, with held-out PSNR and the machine load (shared machines inflate wall times; the load is printed beside them).

    python scripts/bench_oracle.py --recipe gs_oracle         # one full run: wall time + held-out PSNR
    python scripts/bench_oracle.py --recipe nerf_oracle --kill-resume   # also kill a second run mid-way
                                                      # (SIGKILL), resume it, compare final PSNR and parameters

Held-out views: the eval orbit of the config (azimuths offset 22.5° from multiples of 45°, fixed elevation and
distance) — cameras that the random training sampler never draws exactly. PSNR is against the oracle target's renders.
Extra arguments are passed to `dreamkit fit` as overrides (e.g. trainer.max_steps=600).
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch


def final_psnr(run_dir: Path) -> float:
    """Re-render the held-out views from the last checkpoint and score them against the oracle targets."""
    from dreamkit.callbacks import psnr_db
    from dreamkit.priors.configs import build_prior
    from dreamkit.run import load_run
    from dreamkit.system import eval_cameras, load_representation_from_checkpoint

    run_dir, cfg, ckpt = load_run(run_dir)
    model = load_representation_from_checkpoint(cfg, ckpt, torch.device("cpu"))
    cams = eval_cameras(cfg)
    prior = build_prior(cfg.prior, torch.device("cpu"))
    targets = prior.target_images(cams, 0).permute(0, 2, 3, 1)
    bg = torch.tensor(list(cfg.background.color)).expand(len(cams), 3)
    with torch.no_grad():
        images = model.render(cams, background=bg).rgb.clamp(0, 1)
    return psnr_db(images, targets)


def glb_psnr(run_dir: Path) -> dict:
    """The exported GLB (read back by trimesh, not by our exporter) re-rendered unlit at the held-out views, against
    the representation's render and the oracle target. Empty when the run wrote no GLB."""
    from dreamkit.callbacks import psnr_db
    from dreamkit.export.mesh import load_mesh_file, render_mesh
    from dreamkit.priors.configs import build_prior
    from dreamkit.run import load_run
    from dreamkit.system import eval_cameras, load_representation_from_checkpoint

    run_dir, cfg, ckpt = load_run(run_dir)
    glbs = sorted((run_dir / "exports").glob("mesh*.glb"))
    if not glbs:
        return {}
    cams = eval_cameras(cfg)
    bg = list(cfg.background.color)
    # the baked colours already hold the learned (shaded) appearance: render them unlit
    mesh_rgb = render_mesh(load_mesh_file(glbs[0]), cams, background=bg, ssaa=2, ambient=1.0, diffuse=0.0)[0]
    model = load_representation_from_checkpoint(cfg, ckpt, torch.device("cpu"))
    with torch.no_grad():
        rep = model.render(cams, background=torch.tensor(bg).expand(len(cams), 3)).rgb.clamp(0, 1)
    targets = build_prior(cfg.prior, torch.device("cpu")).target_images(cams, 0).permute(0, 2, 3, 1)
    return {"glb_vs_representation_psnr_db": round(psnr_db(mesh_rgb, rep), 2),
            "glb_vs_target_psnr_db": round(psnr_db(mesh_rgb, targets), 2)}


def checkpoint_step(run_dir: Path) -> int:
    ckpt = run_dir / "ckpts" / "last.ckpt"
    if not ckpt.is_file():
        return -1
    try:
        return int(torch.load(ckpt, map_location="cpu", weights_only=False)["global_step"])
    except Exception:
        return -1


RECIPE = "gs_oracle"


def load_average() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def fit_cmd(out: Path, overrides: list[str]) -> list[str]:
    return [sys.executable, "-m", "dreamkit.cli", "fit", "--config", f"{RECIPE}.yaml", f"output_dir={out}",
            "trainer.progress=false", *overrides]


def find_run(out: Path) -> Path:
    runs = sorted(p for p in out.glob("*/*") if p.is_dir())
    if not runs:
        raise SystemExit(f"no run folder under {out}")
    return runs[-1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="gs_oracle", help="gs_oracle | nerf_oracle | triplane_oracle")
    parser.add_argument("--kill-resume", action="store_true")
    parser.add_argument("--kill-at", type=float, default=0.5, help="fraction of max_steps to kill at")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None)
    args, overrides = parser.parse_known_args()
    global RECIPE
    RECIPE = args.recipe.removesuffix(".yaml")
    out = args.out or Path(tempfile.mkdtemp(prefix=f"bench_{RECIPE}_"))
    from dreamkit.config import load_config

    max_steps = int(load_config(f"{RECIPE}.yaml", overrides).trainer.max_steps)

    load_before = load_average()
    t0 = time.perf_counter()
    subprocess.run(fit_cmd(out / "full", overrides), check=True)
    wall = time.perf_counter() - t0
    run = find_run(out / "full")
    psnr = final_psnr(run)
    glb = glb_psnr(run)
    result = {"recipe": RECIPE, "max_steps": max_steps, "wall_s": round(wall, 1), "held_out_psnr_db": round(psnr, 2),
              "threads": torch.get_num_threads(), "load_avg_before": load_before, "load_avg_after": load_average(),
              "cpus": os.cpu_count(), "run_dir": str(run)}
    print(f"{RECIPE}: wall {wall:.1f}s (incl. start-up and exports), held-out PSNR {psnr:.2f} dB, "
          f"load average before {load_before} / after {result['load_avg_after']}")
    if glb:
        result.update(glb)
        print(f"exported GLB re-rendered (trimesh reader, unlit): {glb['glb_vs_representation_psnr_db']:.2f} dB vs "
              f"the representation, {glb['glb_vs_target_psnr_db']:.2f} dB vs the oracle target")

    if args.kill_resume:
        cmd = fit_cmd(out / "killed", overrides)
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        target = int(max_steps * args.kill_at)
        run_k = None
        while proc.poll() is None:
            time.sleep(0.5)
            runs = sorted(p for p in (out / "killed").glob("*/*") if p.is_dir())
            if runs and checkpoint_step(runs[-1]) >= target:
                run_k = runs[-1]
                os.killpg(proc.pid, signal.SIGKILL)
                break
        proc.wait()
        if run_k is None:
            raise SystemExit("the run finished before it could be killed; use a larger max_steps or --kill-at")
        killed_at = checkpoint_step(run_k)
        subprocess.run([sys.executable, "-m", "dreamkit.cli", "fit", f"resume={run_k}", "trainer.progress=false"],
                       check=True)
        psnr_r = final_psnr(run_k)
        a = torch.load(run / "ckpts" / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]
        b = torch.load(run_k / "ckpts" / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]
        same_shapes = a.keys() == b.keys() and all(a[k].shape == b[k].shape for k in a)
        max_diff = max(float((a[k].float() - b[k].float()).abs().max()) for k in a) if same_shapes else float("inf")
        result.update({"killed_at_step": killed_at, "resumed_psnr_db": round(psnr_r, 2),
                       "psnr_diff_db": round(psnr_r - psnr, 3), "max_param_diff": max_diff})
        print(f"killed at checkpoint step {killed_at}, resumed: PSNR {psnr_r:.2f} dB "
              f"(diff {psnr_r - psnr:+.3f} dB), max parameter difference {max_diff:.2e}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
