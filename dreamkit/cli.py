"""The ``dreamkit`` command: fit | export | render | view | report | sample | eval | batch | bench | ablate | list.

    dreamkit fit --config gs_sds.yaml prompt="a red cube" trainer.max_steps=600 seed=3
    dreamkit fit --config gs_sds.yaml viewer=true      # live viewer in the browser (pip install -e ".[viewer]")
    dreamkit fit resume=outputs/gs_sds/a_red_cube@20261129-101500
    dreamkit export outputs/gs_sds/a_red_cube@20261129-101500 --format ply
    dreamkit render outputs/gs_sds/a_red_cube@20261129-101500
    dreamkit view outputs/gs_sds/latest
    dreamkit report outputs/eval/gs_sds
    dreamkit bench --recipe gs_oracle --json bench.json
    dreamkit list

Bad input (unknown key, wrong type, missing file, ...) prints one line starting with ``error:`` and exits with 2.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Optional, Sequence

from .errors import DreamkitError


def _split_overrides(overrides: Sequence[str]) -> tuple[Optional[str], list[str]]:
    resume, rest = None, []
    for item in overrides:
        if item.startswith("resume="):
            resume = item.split("=", 1)[1] or None
        else:
            rest.append(item)
    return resume, rest


def cmd_fit(args: argparse.Namespace) -> int:
    from .config import load_config
    from .priors.configs import check_prior_config
    from .run import fit, load_run

    resume, overrides = _split_overrides(args.overrides)
    if resume:
        run_dir, saved, _ = load_run(resume)
        cfg = load_config(None, overrides, base=saved)
        check_prior_config(cfg.prior)
        _write_run_page(cfg, fit(cfg, resume_dir=run_dir, export=not args.no_export))
        return 0
    if not args.config:
        raise DreamkitError("dreamkit fit needs --config <file or shipped name> (see `dreamkit list`), "
                            "or resume=<run folder>")
    cfg = load_config(args.config, overrides)
    check_prior_config(cfg.prior)
    _write_run_page(cfg, fit(cfg, export=not args.no_export))
    return 0


def _write_run_page(cfg, run_dir: Path) -> None:
    """A finished fit's page (``report: true``): from the files the fit wrote, nothing rendered again. A failure
    here does not fail the fit; it says how to write the page later."""
    from .distributed import is_lead_process

    if not cfg.get("report", True) or not is_lead_process():  # rank zero writes (a fit in several processes)
        return
    from .report import write_report

    try:
        print(f"wrote {write_report(run_dir)}", flush=True)
    except (DreamkitError, OSError, ValueError) as err:
        print(f"warning: the run page was not written ({err}) — dreamkit report {run_dir}", file=sys.stderr,
              flush=True)


def cmd_export(args: argparse.Namespace) -> int:
    from .registry import EXPORT_FORMATS
    from .run import export_run

    formats = list(EXPORT_FORMATS) if args.format == "all" else [f.strip() for f in args.format.split(",")]
    export_run(Path(args.run_dir), formats, out_dir=Path(args.output) if args.output else None,
               overrides=list(args.overrides))
    return 0


def cmd_render(args: argparse.Namespace) -> int:
    from .run import render_run

    render_run(Path(args.run_dir), frames=args.frames, resolution=args.resolution,
               output=Path(args.output) if args.output else None, overrides=list(args.overrides))
    return 0


def cmd_view(args: argparse.Namespace) -> int:
    from .viewer.view import view_run

    try:
        view_run(Path(args.run_dir), host=args.host, port=args.port, resolution=args.resolution)
    except KeyboardInterrupt:
        print("viewer stopped", file=sys.stderr, flush=True)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from .report import write_report

    print(f"wrote {write_report(Path(args.folder), out=args.output)}", flush=True)
    return 0


def _prior_config_for(name: str):
    """--prior NAME → a prior config section: 'oracle', a shipped/local pixel folder, an SD folder or a hub id."""
    from .config import merge_structured
    from .priors.configs import OraclePriorConfig, PixelPriorConfig, StableDiffusionPriorConfig, TextToVideoPriorConfig

    if name == "oracle":
        return merge_structured(OraclePriorConfig, {}, prefix="prior")
    path = Path(os.path.expanduser(name))
    if path.is_dir() and (path / "vae").is_dir():
        unet_config = path / "unet" / "config.json"
        if unet_config.is_file() and json.loads(unet_config.read_text()).get("_class_name") == "UNet3DConditionModel":
            return merge_structured(TextToVideoPriorConfig, {"name": name}, prefix="prior")
        return merge_structured(StableDiffusionPriorConfig, {"name": name}, prefix="prior")
    from .priors.pixel import resolve_prior_folder

    try:
        resolve_prior_folder(name)
        return merge_structured(PixelPriorConfig, {"name": name}, prefix="prior")
    except DreamkitError:
        if path.is_dir() or name.startswith((".", "/", "~")) or "/" not in name:
            raise
    return merge_structured(StableDiffusionPriorConfig, {"name": name}, prefix="prior")


def _score_samples(prompt: str, images, verdicts: list) -> int:
    """Judge single-object world samples: nearest shape by silhouette, nearest colour by hue (dreamkit.eval)."""
    from .eval.world_metrics import classify_sample
    from .world import parse_prompt

    scene = parse_prompt(prompt)
    if scene is None or scene.kind != "single":
        print(f"  {prompt!r}: not a single-object world prompt, not scored")
        return 0
    for i, image in enumerate(images):
        result = classify_sample(image)
        ok = result["shape"] == scene.shapes[0] and result["colour"] == scene.colours[0]
        verdicts.append(ok)
        print(f"  {prompt!r} view {i}: {result['colour']} {result['shape']} (silhouette IoU {result['shape_iou']:.2f})"
              f" {'✓' if ok else '✗'}")
    return len(images)


def _score_joint_samples(prompt: str, images, cameras, group: int, tally: dict) -> None:
    """Judge a multi-view prior's joint samples against the truth rendered at the same cameras (dreamkit.eval)."""
    from .eval.world_metrics import judge_multiview
    from .world import parse_prompt

    scene = parse_prompt(prompt)
    if scene is None or scene.kind == "composition":
        print(f"  {prompt!r}: not a single or asymmetric world prompt, views not judged")
        return
    for g, row in enumerate(judge_multiview(images, cameras, scene, group)):
        tally["groups"] += 1
        tally["consistent"] += bool(row["consistent"])
        if scene.kind == "single":
            seen = ", ".join(f"{c} {s}" for c, s in row["views"])
            detail = f"views: {seen}"
        else:
            tally["asymmetric"] += 1
            tally["oriented"] += bool(row["oriented"])
            mark = lambda seen: "".join("F" if x else "·" for x in seen)  # noqa: E731
            detail = (f"front seen {mark(row['seen_sample'])} (truth {mark(row['seen_truth'])})"
                      f"{', oriented as the truth' if row['oriented'] else ''}")
        print(f"  {prompt!r} group {g}: {detail}; silhouette IoU vs truth {row['silhouette_iou']:.2f} "
              f"{'✓ one object' if row['consistent'] else '✗'}")


def cmd_sample(args: argparse.Namespace) -> int:
    """Grid of prior samples: one row per prompt, ``--views`` columns (joint views for multi-view priors and the
    oracle; independent samples for single-view priors)."""
    import re

    if args.output and Path(args.output).suffix.lower() not in (".png", ".jpg", ".jpeg"):
        raise DreamkitError(f"--output {args.output}: the sample grid is an image — give a path ending in .png "
                            "(or .jpg), e.g. --output samples/grid.png")

    import torch

    from .config import load_config
    from .imageio_utils import save_image_grid, unique_path
    from .priors.configs import build_prior, check_prior_config
    from .priors.sampling import ddim_sample, sample_cameras
    from .run import slugify
    from .components import resolve_device

    key_value = re.compile(r"^[A-Za-z_][\w.]*=")
    prompts = [p for p in args.items if not key_value.match(p)]
    overrides = [p for p in args.items if key_value.match(p)]
    if not prompts or not all(p.strip() for p in prompts):
        raise DreamkitError('dreamkit sample needs at least one non-empty prompt, e.g. dreamkit sample "a red torus"')
    if args.config:
        cfg = load_config(args.config, overrides + [f"prompt={prompts[0]!r}"])
        prior_cfg = cfg.prior
    else:
        if overrides:
            raise DreamkitError(f"overrides {overrides} need --config (or use --prior NAME)")
        prior_cfg = _prior_config_for(args.prior)
    check_prior_config(prior_cfg)
    device = resolve_device(args.device)
    prior = build_prior(prior_cfg, device)
    views = int(args.views)
    view_settings = getattr(prior, "view_settings", None)
    # multi-view priors, the oracle and camera-aware single-view priors (a ray map or camera class embedding) get
    # an orbit of cameras, one per sample
    joint = (getattr(prior, "views", 1) > 1 or prior_cfg.type == "oracle"
             or bool(view_settings is not None and view_settings.needs_cameras))
    if getattr(prior, "views", 1) > 1 and views % prior.views:
        raise DreamkitError(f"--views must be a multiple of this prior's {prior.views} joint views")
    guidance = float(args.guidance) if args.guidance is not None else float(prior.sample_guidance_scale)
    generator = torch.Generator().manual_seed(int(args.seed))
    if int(getattr(prior, "frames", 1) or 1) > 1:
        return _sample_video(args, prior, prior_cfg, prompts, guidance, generator)
    rows = []
    scored, verdicts = 0, []
    tally = {"groups": 0, "consistent": 0, "asymmetric": 0, "oriented": 0}
    group = int(getattr(prior, "views", 1))
    for prompt in prompts:
        cams = sample_cameras(views, int(prior.resolution), group=group) if joint else None
        images = ddim_sample(prior, [prompt] * views, steps=int(args.steps), guidance_scale=guidance,
                             cameras=cams, generator=generator)
        rows.append(images.permute(0, 2, 3, 1).cpu())
        if args.score and group > 1:
            _score_joint_samples(prompt, images.cpu(), cams, group, tally)
        elif args.score:
            scored += _score_samples(prompt, images.cpu(), verdicts)
    grid = torch.cat(rows)
    if args.score and group > 1:
        print(f"groups of {group} joint views consistent with one object (judged against ground-truth renders at "
              f"the same cameras): {tally['consistent']}/{tally['groups']}; asymmetric groups with the front where "
              f"the truth has it: {tally['oriented']}/{tally['asymmetric']}")
    elif args.score:
        right = sum(verdicts)
        print(f"samples with the prompted shape and colour (judged against ground-truth renders): {right}/{scored}")
    out = Path(args.output) if args.output else Path("samples") / f"{slugify(prompts[0])}.png"
    path = save_image_grid(grid, unique_path(out), columns=views)
    print(f"wrote {path} ({len(prompts)} prompt(s) × {views} view(s), {prior_cfg.type} prior "
          f"{getattr(prior_cfg, 'name', '')}, guidance {guidance:g})")
    return 0


def _sample_video(args, prior, prior_cfg, prompts, guidance, generator) -> int:
    """A video prior's samples: ``--clips`` clips per prompt from one still camera at the world's front, written as
    a PNG grid (one clip per row, frames left to right) and an MP4 beside it (the clips side by side, looping)."""
    import torch

    from .eval.clip_motion import judge_clip
    from .imageio_utils import save_image_grid, unique_path, write_video
    from .priors.sampling import ddim_sample_clips
    from .run import slugify
    from .world import parse_prompt
    from .world.motion import split_motion_caption

    frames, res, n = int(prior.frames), int(prior.resolution), int(args.clips)
    if n < 1:
        raise DreamkitError(f"--clips {n}: ask for at least one clip per prompt")

    def sample(prompt: str) -> torch.Tensor:
        return ddim_sample_clips(prior, [prompt] * n, steps=int(args.steps), guidance_scale=guidance,
                                 generator=generator)

    clips, right, scored = [], 0, 0
    for prompt in prompts:
        batch = sample(prompt)
        clips.append(batch)
        if args.score:
            obj, motion = split_motion_caption(prompt)
            scene = parse_prompt(obj)
            colour = scene.colours[0] if scene is not None and scene.kind == "single" else None
            still = None
            if motion.name == "spinning":  # a turn in place is judged against still clips of the same object
                changes = sorted(judge_clip(c, "still", colour)["change"] for c in sample(f"{obj} still"))
                still = changes[len(changes) // 2]
            for i, clip in enumerate(batch):
                verdict = judge_clip(clip, motion.name, colour, still_change=still)
                right, scored = right + verdict["ok"], scored + 1
                print(f"  {prompt!r} clip {i}: {'✓' if verdict['ok'] else '✗'} {motion.name}: {verdict['why']}")
    if args.score:
        print(f"clips that move as prompted (dreamkit.eval.clip_motion): {right}/{scored}")
    everything = torch.cat(clips)  # [P·n, F, 3, r, r]
    out = Path(args.output) if args.output else Path("samples") / f"{slugify(prompts[0])}.png"
    path = save_image_grid(everything.flatten(0, 1).permute(0, 2, 3, 1), unique_path(out), columns=frames)
    # the MP4: every clip side by side (a row per prompt), 4× larger, the clip played three times
    tiles = everything.reshape(len(prompts), n, frames, 3, res, res).permute(2, 0, 4, 1, 5, 3)
    movie = tiles.reshape(frames, len(prompts) * res, n * res, 3)
    movie = torch.nn.functional.interpolate(movie.permute(0, 3, 1, 2), scale_factor=4, mode="nearest")
    video = write_video(movie.permute(0, 2, 3, 1).repeat(3, 1, 1, 1), path.with_suffix(".mp4"), fps=6)
    print(f"wrote {path} and {video} ({len(prompts)} prompt(s) × {n} clip(s) of {frames} frames, "
          f"{prior_cfg.type} prior {getattr(prior_cfg, 'name', '')}, guidance {guidance:g})")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from .eval.benchmark import run_eval

    default = Path(args.rescore).name + "-rescore" if args.rescore else Path(args.config or "eval").stem
    out = Path(args.out) if args.out else Path("outputs") / "eval" / default
    if not args.out:
        from .imageio_utils import unique_path

        out = unique_path(out)
    if args.rescore:
        from .eval.benchmark import rescore_eval

        rescore_eval(Path(args.rescore), out, args.overrides)
        return 0
    if not args.config:
        raise DreamkitError("dreamkit eval needs --config RECIPE (or --rescore EVAL_DIR to score finished runs again)")
    run_eval(args.config, args.prompts, out, args.overrides, jobs=args.jobs, address=args.address)
    return 0


def cmd_batch(args: argparse.Namespace) -> int:
    """Many prompts, each a fit, on the engine (Ray); resumable (``dreamkit.batchfit``; docs/scaling.md)."""
    import shlex

    from .batchfit import run_batch

    command = " ".join(["dreamkit batch --config", shlex.quote(args.config), "--prompts",
                        *(shlex.quote(p) for p in args.prompts), *(shlex.quote(o) for o in args.overrides)])
    run_batch(args.config, args.prompts, Path(args.out) if args.out else None, list(args.overrides),
              address=args.address, jobs=args.jobs, cpus_per_fit=args.cpus_per_fit, gpus_per_fit=args.gpus_per_fit,
              max_retries=args.max_retries, command=command)
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from .bench import BenchOptions, run_bench

    opts = BenchOptions(recipes=list(args.recipe or []), device=args.device, prior=args.prior, steps=args.steps,
                        warmup=args.warmup, overrides=list(args.override or []),
                        json_path=Path(args.json) if args.json else None,
                        sd21_dir=Path(args.sd21_dir) if args.sd21_dir else None)
    _, code = run_bench(opts)
    return code


def cmd_ablate(args: argparse.Namespace) -> int:
    """A grid of runs (losses × options × seeds × prompts, 2D or 3D), resumable, with tables and plots
    (``dreamkit.ablate``; docs/ablate.md)."""
    import shlex

    from .ablate import load_grid, run_grid
    from .errors import Interrupted

    grid = load_grid(args.grid, list(args.overrides))
    out = Path(args.out) if args.out else Path("outputs") / "ablate" / grid.name
    if args.dry_run:
        print(f"ablate {grid.name}: {len(grid.cells)} cells → {out} (dry run: every cell's config is valid)")
        for cell in grid.cells:
            print(f"  {cell.id}  [{cell.kind}] {cell.label}")
        return 0
    command = " ".join(["dreamkit ablate --grid", shlex.quote(str(args.grid)), "--out", shlex.quote(str(out)),
                        *(shlex.quote(o) for o in args.overrides)])
    try:
        run_grid(grid, out, limit=args.limit, retry_failed=args.retry_failed, command=command, jobs=args.jobs,
                 address=args.address)
    except (KeyboardInterrupt, Interrupted) as err:  # Ctrl-C, or a 3D cell's fit stopped by SIGINT / SIGTERM
        signum = err.exit_code - 128 if isinstance(err, Interrupted) else 2
        raise Interrupted(f"interrupted — finished cells are kept in {out}/cells; run the same command again to "
                          "continue (a 3D cell continues its fit from its checkpoint)", signum) from None
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from .config import shipped_configs
    from .registry import EXPORTERS, REGISTRY

    for kind, table in REGISTRY.items():
        print(f"{kind}s:")
        for name, (_, _, summary) in table.items():
            print(f"  {name:<18} {summary}")
    print("exporters:")
    for name, (_, summary) in EXPORTERS.items():
        print(f"  {name:<18} {summary}")
    print("configs:")
    for path in shipped_configs():
        summary = ""
        with open(path) as f:
            first = f.readline().strip()
            if first.startswith("#"):
                summary = first.lstrip("# ")
        print(f"  {path.name:<18} {summary}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dreamkit", description="Text to 3D by score distillation.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("fit", help="optimise a representation for a prompt",
                       description="Train. Overrides are OmegaConf dotlist items: key=value (e.g. trainer.max_steps=600"
                                   ' prompt="a red cube"); resume=<run folder> continues a run.')
    p.add_argument("--config", "-c", help="recipe YAML path or shipped name (gs_sds.yaml, gs_oracle)")
    p.add_argument("--no-export", action="store_true", help="skip the exports at the end")
    p.add_argument("overrides", nargs="*", help="key=value overrides")
    p.set_defaults(func=cmd_fit)

    p = sub.add_parser("export", help="export a finished run (ply, mp4, all)")
    p.add_argument("run_dir")
    p.add_argument("--format", "-f", default="all", help="comma-separated formats or 'all'")
    p.add_argument("--output", "-o", help="output folder (default <run>/exports)")
    p.add_argument("overrides", nargs="*", help="export.* overrides (e.g. export.mesh_threshold=0.2)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("render", help="turntable MP4 of a run")
    p.add_argument("run_dir")
    p.add_argument("--frames", type=int)
    p.add_argument("--resolution", type=int)
    p.add_argument("--output", "-o", help="MP4 path (default <run>/exports/turntable.mp4, numbered if it exists)")
    p.add_argument("overrides", nargs="*", help="export.* overrides (e.g. export.turntable_elevation=30)")
    p.set_defaults(func=cmd_render)

    p = sub.add_parser("view", help="live viewer of a run in the browser (its newest checkpoint, reloaded as it trains)",
                       description="Serve a viser page that renders the run's newest checkpoint from the camera you "
                                   "drag, with its logged loss and an Export now button; a newer checkpoint (a run "
                                   "still training) is loaded when it appears. While fitting, viewer=true does the "
                                   'same with Pause and Resume. Needs pip install -e ".[viewer]" (docs/viewer.md).')
    p.add_argument("run_dir")
    p.add_argument("--port", type=int, default=8080, help="port (default 8080; a busy one → the next free one)")
    p.add_argument("--host", default="127.0.0.1",
                   help="interface to listen on (default 127.0.0.1; 0.0.0.0 lets other machines connect)")
    p.add_argument("--resolution", type=int, default=0,
                   help="longer side of the renders in pixels (default: 128 on the CPU, 512 on CUDA)")
    p.set_defaults(func=cmd_view)

    p = sub.add_parser("report", help="an HTML page of a run (GLB viewer, turntable, plots, config), or a gallery",
                       description="Write a self-contained HTML folder that opens offline: for a run folder its "
                                   "exported GLB in <model-viewer>, turntable, renders, loss and metric plots, eval "
                                   "scores and resolved config; for an eval folder (dreamkit eval --out DIR) or any "
                                   "folder of runs a gallery with a card per prompt linking to each run's page. An "
                                   "earlier report is replaced only if nobody changed it (docs/report.md).")
    p.add_argument("folder", help="run folder, eval folder or a folder holding run folders (e.g. outputs/)")
    p.add_argument("--output", "-o", help="report folder (default <folder>/report)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("sample", help="a grid of samples from a prior (tiny, oracle, Stable Diffusion, ...)")
    p.add_argument("items", nargs="+", help='prompts ("a red torus"), and key=value overrides with --config')
    p.add_argument("--prior", default="tiny-t2i",
                   help="oracle | shipped prior name | pixel or SD folder | hub id (default tiny-t2i)")
    p.add_argument("--config", "-c", help="take the prior from this recipe instead")
    p.add_argument("--views", type=int, default=4, help="columns: joint views (multi-view priors) or samples")
    p.add_argument("--clips", type=int, default=2,
                   help="video priors: clips per prompt (rows of the grid; an MP4 of the clips is written beside it)")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--guidance", type=float, default=None,
                   help="classifier-free guidance scale (default: the prior's own, from its model_index.json "
                        "'sample_guidance_scale'; else 7.5)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--output", "-o", help="PNG path (default samples/<prompt>.png, numbered if it exists)")
    p.add_argument("--score", action="store_true",
                   help="judge world prompts against ground-truth renders: shape and colour of each sample; for a "
                        "multi-view prior, whether each group of joint views shows one object (one front); for a "
                        "video prior, whether each clip moves as its prompt says")
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("eval", help="the world benchmark: fit world prompts, score geometry/colour/fronts vs truth")
    p.add_argument("--config", "-c", help="recipe (gs_sds.yaml, gs_oracle.yaml, ...)")
    p.add_argument("--rescore", metavar="EVAL_DIR",
                   help="score the runs of a finished eval again without fitting (overrides: e.g. export.*)")
    p.add_argument("--prompts", "-p", nargs="+", default=["singles20"],
                   help="prompt-set names (singles20, singles4, asymmetric) and/or world prompts")
    p.add_argument("--out", "-o", help="results folder (default outputs/eval/<recipe>, numbered if it exists)")
    p.add_argument("--jobs", "-j", type=int, default=1,
                   help="fits at once, on Ray workers that share the CPU threads equally (needs the scale extra: "
                        'pip install -e ".[scale]"); 1: one after another in this process')
    p.add_argument("--address", help="an existing Ray cluster (ray start --head; e.g. auto or HOST:6379)")
    p.add_argument("overrides", nargs="*", help="key=value overrides applied to every fit")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("batch", help="many prompts, each a fit, on Ray (this machine or a cluster); resumable",
                       description="Fit every prompt with the recipe on Ray workers that each load the prior once "
                                   "(a local Ray instance, or --address). The batch folder keeps a manifest: the "
                                   "same command again skips finished prompts, resumes interrupted fits from their "
                                   "checkpoints and retries failed ones. Writes results.csv, results.md and "
                                   "contact_sheet.png (docs/scaling.md). Needs pip install -e \".[scale]\" "
                                   "unless --jobs 1.")
    p.add_argument("--config", "-c", required=True, help="recipe (gs_sds.yaml, ...)")
    p.add_argument("--prompts", "-p", nargs="+", required=True,
                   help="a prompt set (singles20, singles4, asymmetric, compositions8), a file with one prompt a "
                        "line, and/or prompts")
    p.add_argument("--out", "-o", help="batch folder (default outputs/batch/<recipe>-<prompts>); reused to resume")
    p.add_argument("--address", help="an existing Ray cluster (ray start --head; e.g. auto or HOST:6379); default: "
                                     "a Ray instance on this machine")
    p.add_argument("--jobs", "-j", type=int, default=None,
                   help="fits at once (default: as many as the CPUs/GPUs hold at --cpus-per-fit/--gpus-per-fit); "
                        "1 without --address: one after another in this process, without Ray")
    p.add_argument("--cpus-per-fit", type=float, default=None,
                   help="CPUs each fit asks Ray for, and its torch threads (default 1; with --jobs 1: torch's own)")
    p.add_argument("--gpus-per-fit", type=float, default=0.0,
                   help="GPUs each fit asks Ray for, e.g. 0.25: four fits share a GPU (default 0: CPU fits)")
    p.add_argument("--max-retries", type=int, default=1, help="times a failed fit is tried again (default 1)")
    p.add_argument("overrides", nargs="*", help="key=value overrides applied to every fit")
    p.set_defaults(func=cmd_batch)

    p = sub.add_parser("bench", help="steps/s of recipes' training step, its split, and the prior-alone limit",
                       description="Time each recipe's real training step (warm-up, then timed steps) without "
                                   "Lightning's Trainer: steps/s, peak memory, the split of a step into render, "
                                   "encode, prior, guidance, regularizers, backward, optimizer, post_step and other, "
                                   "and the limit (the prior's work for the same batch alone) with ratio = step/limit.")
    p.add_argument("--recipe", "-r", action="extend", nargs="+", metavar="NAME",
                   help="shipped recipe names or YAML paths (default: every shipped recipe; with --prior "
                        "sd21-random: gs_sds32)")
    p.add_argument("--device", default="auto", help="cpu | cuda | cuda:N | auto (default)")
    p.add_argument("--prior", default="tiny", choices=["tiny", "sd21-random"],
                   help="tiny: each recipe as shipped; sd21-random: the real SD 2.1-base architecture with random "
                        "weights (no download) at 512², batch 4")
    p.add_argument("--steps", type=int, help="timed steps (default 50 on CUDA, 10 on the CPU; 1 for sd21-random "
                                             "on the CPU)")
    p.add_argument("--warmup", type=int, help="untimed steps first (default 10 on CUDA, 2 on the CPU)")
    p.add_argument("--override", action="extend", nargs="+", metavar="KEY=VALUE", default=[],
                   help="config overrides applied to every recipe (e.g. trainer.grad_clip=1.0)")
    p.add_argument("--json", metavar="PATH", help="also write the results as a JSON list, one object per recipe")
    p.add_argument("--sd21-dir", metavar="DIR",
                   help="cache folder of the random SD 2.1 weights (default $DREAMKIT_SD21_RANDOM_DIR or "
                        "~/.cache/dreamkit/sd21-random; built there once, ~2.5 GB)")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("ablate", help="a grid of runs: losses × options × seeds × prompts; tables and plots",
                       description="Run every cell of a grid file (a base recipe, axes of override lists, seeds, "
                                   "prompts; 2D image or 3D fits), one at a time, with common random numbers. "
                                   "Finished cells are kept: the same command again continues. Writes results.csv, "
                                   "results.md, metrics.png and images.png (docs/ablate.md).")
    p.add_argument("--grid", "-g", required=True,
                   help="grid YAML path or shipped grid name (configs/ablations: playground_2d, singles20_losses)")
    p.add_argument("--out", "-o", help="grid folder (default outputs/ablate/<grid name>); reused to resume")
    p.add_argument("--limit", type=int, help="run at most this many pending cells")
    p.add_argument("--dry-run", action="store_true", help="check every cell's config and list the cells; run nothing")
    p.add_argument("--retry-failed", action="store_true", help="run again the cells that finished with an error")
    p.add_argument("--jobs", "-j", type=int, default=1,
                   help="cells at once on Ray workers (pip install -e \".[scale]\"); 1: one at a time in this process")
    p.add_argument("--address", help="an existing Ray cluster to run the cells on (ray start --head)")
    p.add_argument("overrides", nargs="*", help="key=value overrides applied to every cell (last)")
    p.set_defaults(func=cmd_ablate)

    p = sub.add_parser("list", help="registered components and shipped configs")
    p.set_defaults(func=cmd_list)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    # key=value overrides may come before or after options (`fit --config x a=1 --no-export b=2`); argparse stops
    # collecting a positional list at the first option, so the rest arrive here as extras
    args, extra = parser.parse_known_args(argv)
    if extra:
        if hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
            args.overrides = list(args.overrides) + extra
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return int(args.func(args) or 0)
    except DreamkitError as err:
        print(f"{err.prefix}{err}", file=sys.stderr, flush=True)
        return err.exit_code
    except OSError as err:  # a full disk, an unwritable or vanished folder: the environment, not a bug
        where = f" {err.filename}" if err.filename else ""
        print(f"error: cannot write or read{where}: {err.strerror or err} — free space or fix the folder's "
              "permissions, then run again (a fit resumes with `dreamkit fit resume=<run folder>`)",
              file=sys.stderr, flush=True)
        return 2
    except KeyboardInterrupt:
        print("interrupted — resume with `dreamkit fit resume=<run folder>`", file=sys.stderr, flush=True)
        return 130


if __name__ == "__main__":
    sys.exit(main())
