#!/usr/bin/env python
"""Benchmark of the oracle recipes: `dreamkit fit --config <recipe>.yaml` (gs_oracle, nerf_oracle, triplane_oracle,
mesh_oracle), timed, with held-out PSNR and the machine load (shared machines inflate wall times; the load is printed
beside them).

    python scripts/bench_oracle.py --recipe mesh_oracle       # a coarse-to-fine recipe: its source stage (gs_oracle)
                                                      # runs first and is passed as init_from (unless given);
                                                      # the wall time covers both stages

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

import numpy as np
import torch

from dreamkit.checkpoint import load_checkpoint
from dreamkit.run import checkpoint_step, held_out_psnr, run_folders


def scores(run_dir: Path) -> dict:
    """Held-out PSNR of the last checkpoint against the oracle targets and, when the run wrote one, of its GLB read
    back by trimesh (not by our exporter) and re-rendered unlit, against the representation and the targets."""
    from dreamkit.callbacks import psnr_db
    from dreamkit.export.mesh import load_mesh_file, render_mesh
    from dreamkit.run import held_out_renders

    cfg, _, cams, images, targets = held_out_renders(run_dir)
    out = {"held_out_psnr_db": psnr_db(images, targets)}
    glbs = sorted((Path(run_dir) / "exports").glob("mesh*.glb"))
    if glbs:
        # the baked colours already hold the learned (shaded) appearance: render them unlit
        mesh = load_mesh_file(glbs[0])
        morph = glb_morph(glbs[0])
        if morph is None:
            mesh_rgb = render_mesh(mesh, cams, background=list(cfg.background.color), ssaa=2,
                                   ambient=1.0, diffuse=0.0)[0]
        else:  # an animated GLB: each held-out camera sees the mesh at its time, played from the file's morph targets
            base, times, disp = morph
            if base.shape != mesh.verts.shape or not np.allclose(base, mesh.verts, atol=1e-6):
                raise SystemExit(f"{glbs[0]}: trimesh's vertices are not the primitive's (cannot apply its morphs)")
            frames = []
            for i in range(len(cams)):
                moved = mesh.copy(verts=(base + play_morph(times, disp, float(cams.time[i]) * times[-1]))
                                  .astype(np.float32))
                frames.append(render_mesh(moved, cams[i:i + 1], background=list(cfg.background.color), ssaa=2,
                                          ambient=1.0, diffuse=0.0)[0])
            mesh_rgb = torch.cat(frames)
            out["glb_animated"] = True
        out["glb_vs_representation_psnr_db"] = round(psnr_db(mesh_rgb, images), 2)
        out["glb_vs_target_psnr_db"] = round(psnr_db(mesh_rgb, targets), 2)
    return out


def glb_morph(path: Path):
    """(POSITION [V, 3], keyframe times [N], displacements [N, V, 3]) of an animated GLB's first primitive, read by
    pygltflib (not by our exporter); None when the file has no morph-target animation."""
    import pygltflib

    gltf = pygltflib.GLTF2().load(str(path))
    prim = gltf.meshes[0].primitives[0]
    if not gltf.animations or not prim.targets:
        return None
    blob = gltf.binary_blob()

    def read(index: int) -> np.ndarray:
        acc = gltf.accessors[index]
        view = gltf.bufferViews[acc.bufferView]
        width = {"SCALAR": 1, "VEC3": 3}[acc.type]
        start = (view.byteOffset or 0) + (acc.byteOffset or 0)
        return np.frombuffer(blob[start:start + acc.count * width * 4], np.float32).reshape(acc.count, width)

    sampler = gltf.animations[0].samplers[0]
    weights = read(sampler.output).reshape(-1, len(prim.targets))
    disp = np.stack([read(t["POSITION"]) for t in prim.targets])
    return read(prim.attributes.POSITION), read(sampler.input)[:, 0], np.einsum("nk,kvc->nvc", weights, disp)


def play_morph(times: np.ndarray, disp: np.ndarray, seconds: float) -> np.ndarray:
    """The displacement at ``seconds`` under LINEAR keyframe interpolation (glTF's sampler)."""
    k = int(np.clip(np.searchsorted(times, seconds, side="right") - 1, 0, len(times) - 2))
    a = float(np.clip((seconds - times[k]) / (times[k + 1] - times[k]), 0, 1))
    return (1 - a) * disp[k] + a * disp[k + 1]


RECIPE = "gs_oracle"
#: recipes that refine another run (init_from): the recipe of their source stage
SOURCE_STAGE = {"mesh_oracle": "gs_oracle", "dmtet_oracle": "gs_oracle"}


def load_average() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def fit_cmd(out: Path, overrides: list[str]) -> list[str]:
    return [sys.executable, "-m", "dreamkit.cli", "fit", "--config", f"{RECIPE}.yaml", f"output_dir={out}",
            "trainer.progress=false", *overrides]


def find_run(out: Path) -> Path:
    runs = run_folders(out)
    if not runs:
        raise SystemExit(f"no run folder under {out}")
    return runs[-1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="gs_oracle", help="gs_oracle | nerf_oracle | triplane_oracle | "
                        "mesh_oracle | dmtet_oracle")
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
    source_wall = None
    if RECIPE in SOURCE_STAGE and not any(o.startswith("init_from=") for o in overrides):
        source = SOURCE_STAGE[RECIPE]
        subprocess.run([sys.executable, "-m", "dreamkit.cli", "fit", "--config", f"{source}.yaml",
                        f"output_dir={out / 'source'}", "trainer.progress=false", "export.formats=[]",
                        "export.turntable=false"], check=True)
        source_wall = time.perf_counter() - t0
        overrides = [*overrides, f"init_from={find_run(out / 'source')}"]
        print(f"source stage {source}: {source_wall:.1f}s", flush=True)
    subprocess.run(fit_cmd(out / "full", overrides), check=True)
    wall = time.perf_counter() - t0
    run = find_run(out / "full")
    measured = scores(run)
    psnr = measured.pop("held_out_psnr_db")
    glb = measured
    result = {"recipe": RECIPE, "max_steps": max_steps, "wall_s": round(wall, 1), "held_out_psnr_db": round(psnr, 2),
              "threads": torch.get_num_threads(), "load_avg_before": load_before, "load_avg_after": load_average(),
              "cpus": os.cpu_count(), "run_dir": str(run)}
    if source_wall is not None:
        result["source_stage"] = {"recipe": SOURCE_STAGE[RECIPE], "wall_s": round(source_wall, 1)}
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
            runs = run_folders(out / "killed")
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
        psnr_r = held_out_psnr(run_k)
        a = load_checkpoint(run / "ckpts" / "last.ckpt")["state_dict"]
        b = load_checkpoint(run_k / "ckpts" / "last.ckpt")["state_dict"]
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
