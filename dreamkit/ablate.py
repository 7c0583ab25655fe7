"""``dreamkit ablate``: one harness that compares guidance losses (and any other option) on the same seeds.

A grid file names a base recipe, axes of values (each value a list of overrides, or a recipe to take whole or to take
its loss from), seeds and prompts; every combination is a *cell*, run one at a time::

    dreamkit ablate --grid configs/ablations/playground_2d.yaml --out outputs/ablate/playground_2d

Grid file (keys checked; a typo names the closest valid key)::

    name: playground_2d              # default: the file's stem
    recipe: image_sds.yaml           # the base recipe of every cell
    config: {...}                    # optional: merged onto the recipe, as a recipe naming it as its base would be
    overrides: [trainer.max_steps=150]   # dotlist overrides of every cell (after the recipe, before the axes)
    axes:                            # ordered; each axis maps a value's name to what it changes:
      loss:
        sds: {loss_recipe: gs_sds.yaml}   # the guidance and loss sections of that recipe (the loss as shipped)
        ism: {loss_recipe: gs_ism.yaml, overrides: [guidance.warmup_steps=110]}
      scale:
        low: [guidance.guidance_scale=5]  # a plain list: overrides
        high: {recipe: gs_sds.yaml}       # another base recipe for this value
    seeds: [0, 1, 2]
    prompts: [a red cube, a blue torus]   # prompts, or prompt-set names (singles20, singles4, asymmetric)
    metrics: {psnr_threshold: 18}         # optional settings of the metrics

**Cells.** A cell with ``representation.name=image`` (the 2D playground, ``dreamkit/representations/image.py``) runs
in this process through the system's own training step (:meth:`dreamkit.system.DreamSystem.optimization_step`, the
step ``dreamkit fit`` runs, without Lightning's Trainer; the prior is loaded once per process and shared). Any other
cell is a ``dreamkit fit`` (:func:`dreamkit.run.fit`) scored by the world benchmark's functions
(:mod:`dreamkit.eval.benchmark`). :func:`run_cell` runs one cell from a self-contained, picklable :class:`Cell`, so
a scheduler (Ray, issue 24) can run cells elsewhere; :func:`run_grid` is the one-at-a-time driver.

**Common random numbers.** Cells differ only in what their axes change: a seed fixes the initialisation, the cameras
and the guidance's own random draws (the system's generators are seeded by it). In 2D cells the timesteps and the
noise ε of every step are moreover drawn from a stream of their own, seeded by (seed, step) and handed to the guidance
(``guidance(out, batch, step, t=..., noise=...)``): every loss with the same seed sees the same t and ε at every step,
whatever else it draws (ASD's Δt, VSD's φ step, ...). 3D cells share the seed only.

**Resuming.** Each finished cell's result is written atomically to ``<out>/cells/<cell id>.json``; the id holds a hash
of the cell's whole resolved config, so a changed grid never reuses a stale result. Running the same command again
skips the finished cells (and says so); a cell killed midway runs again (a 3D cell continues its fit from the last
checkpoint). ``--limit N`` runs at most N pending cells.

**Results** (rewritten after every cell; plots and the image grid when the grid ends): ``results.csv`` (one row per
cell and particle), ``results.md`` (per axis value: mean ± std over seeds of each metric, each seed's value being the
mean over prompts and particles — booleans a count), ``metrics.png`` and ``images.png`` (2D: every cell's image;
3D: a turntable frame of every fit). Metrics:

* fidelity — 2D with the oracle: RMSE and PSNR to the nearest of the prompt's targets (exact: the targets are known),
  ``covers`` when the PSNR reaches ``metrics.psnr_threshold``; 2D with a tiny-world prior: the world judge's verdict
  (:func:`dreamkit.eval.world_metrics.classify_sample`: shape and colour as prompted, on an image that kept a
  background: ``framed``, foreground ≤ :data:`MAX_FOREGROUND`) and the RMSE to the nearest of the truth's renders over
  168 views; 3D: the world benchmark's verdict ``ok``, Chamfer and IoU;
* diversity — across seeds and particles of one prompt: modes covered (oracle), distinct judged classes (tiny priors,
  3D) and the mean pairwise RMSE of the images (2D);
* saturation — the mean chroma (max − min of RGB) of the result's foreground over the target's (the truth's)
  foreground chroma: 1 is the target's, above 1 oversaturated;
* wall time of the cell (``wall_s``; 2D also ``fit_s``, the steps alone).
"""
from __future__ import annotations

import csv
import dataclasses
import difflib
import hashlib
import itertools
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch

from .errors import ConfigError, DreamkitError

__all__ = ["Cell", "Grid", "load_grid", "run_cell", "run_grid", "write_tables", "GRID_KEYS"]

#: the keys of a grid file and what each holds
GRID_KEYS = {
    "name": "the grid's name (default: the file's stem)",
    "recipe": "the base recipe of every cell",
    "config": "a mapping merged onto the recipe (as a recipe naming it as its base)",
    "overrides": "dotlist overrides applied to every cell",
    "axes": "axis name → {value name → overrides list or {recipe, loss_recipe, config, overrides}}",
    "seeds": "the seeds of every combination",
    "prompts": "prompts or prompt-set names; default: the recipe's prompt",
    "metrics": "settings of the metrics: psnr_threshold",
}
#: the keys of an axis value given as a mapping
VALUE_KEYS = ("recipe", "loss_recipe", "config", "overrides")
#: metric settings and their defaults
METRIC_DEFAULTS = {"psnr_threshold": 18.0}
#: metrics shown in results.md and the plots, in order, with the direction that is better
HEADLINE = [("ok", "↑"), ("verdict", "↑"), ("framed", "↑"), ("covers", "↑"), ("psnr", "↑"), ("rmse", "↓"),
            ("truth_rmse", "↓"), ("chamfer", "↓"), ("iou", "↑"), ("saturation", "→1"), ("modes", "↑"),
            ("classes", ""), ("spread", ""), ("wall_s", "↓")]
DIVERSITY = ("modes", "classes", "spread")


# ---------------------------------------------------------------------------------------------------------- grids
@dataclasses.dataclass
class Cell:
    """One run of a grid: everything :func:`run_cell` needs, as plain values (picklable)."""

    id: str
    label: str
    axes: dict[str, str]
    seed: int
    prompt: str
    config: dict            # the resolved dreamkit config (plain containers)
    kind: str               # "2d" (image representation, in process) or "3d" (a dreamkit fit)
    metrics: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Grid:
    name: str
    path: Path
    axes: dict[str, list[str]]
    seeds: list[int]
    prompts: list[str]
    cells: list[Cell]
    metrics: dict


def _closest(word: str, valid: Sequence[str]) -> str:
    close = difflib.get_close_matches(str(word), list(valid), n=2, cutoff=0.4)
    return (f"did you mean {' or '.join(close)}? " if close else "") + f"valid keys: {', '.join(valid)}"


def resolve_grid_path(name: str) -> Path:
    """A grid file path, or the name of a shipped grid (``configs/ablations/<name>.yaml``)."""
    from .config import shipped_dir

    path = Path(os.path.expanduser(name))
    if path.is_file():
        return path
    folder = shipped_dir("configs") / "ablations"
    for candidate in (folder / path.name, folder / (path.name + ".yaml")):
        if candidate.is_file():
            return candidate
    shipped = sorted(p.name for p in folder.glob("*.yaml")) if folder.is_dir() else []
    close = difflib.get_close_matches(path.name, shipped, n=2, cutoff=0.4)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    raise ConfigError(f"grid file not found: {name} — {hint}shipped grids: {', '.join(shipped) or 'none'}")


def _merge_child(parent: Any, child: Any) -> Any:
    """``child`` merged onto ``parent`` with the recipe rules of :func:`dreamkit.config.load_recipe` (a child's
    ``loss`` replaces the parent's; a ``representation``/``prior`` naming another component replaces it whole)."""
    from omegaconf import DictConfig, OmegaConf

    from .config import merge_recipe

    child = OmegaConf.create(child) if not isinstance(child, DictConfig) else child
    return merge_recipe(parent, child)


def _value_spec(axis: str, name: str, spec: Any, where: str) -> dict:
    """An axis value as {recipe, loss_recipe, config, overrides}."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    key = f"axes.{axis}.{name}"
    if spec is None:
        spec = []
    if isinstance(spec, (ListConfig, list)):
        spec = {"overrides": list(spec)}
    elif isinstance(spec, str):
        spec = {"overrides": [spec]}
    elif isinstance(spec, DictConfig):
        spec = OmegaConf.to_container(spec)
    if not isinstance(spec, dict):
        raise ConfigError(f"{where}: {key} must be a list of overrides or a mapping with {', '.join(VALUE_KEYS)}, "
                          f"got {spec!r}")
    for k in spec:
        if k not in VALUE_KEYS:
            raise ConfigError(f"{where}: unknown key '{key}.{k}' — {_closest(k, VALUE_KEYS)}")
    overrides = spec.get("overrides") or []
    if isinstance(overrides, str):
        overrides = [overrides]
    if not isinstance(overrides, list) or not all(isinstance(o, str) for o in overrides):
        raise ConfigError(f"{where}: {key}.overrides must be a list of key=value strings, got {overrides!r}")
    if spec.get("config") is not None and not isinstance(spec["config"], dict):
        raise ConfigError(f"{where}: {key}.config must be a mapping of config keys")
    return {"recipe": spec.get("recipe"), "loss_recipe": spec.get("loss_recipe"), "config": spec.get("config"),
            "overrides": [str(o) for o in overrides]}


def _short_hash(payload: Any) -> str:
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def _slug(text: str, n: int = 24) -> str:
    from .run import slugify

    return slugify(str(text), max_len=n)


def load_grid(path: str, extra_overrides: Sequence[str] = ()) -> Grid:
    """Read and check a grid file; every cell's config is built and validated here (a typo in any cell fails before
    the first runs). ``extra_overrides`` apply to every cell (last)."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    from .config import PRESENTATION_KEYS, load_config, load_recipe, load_yaml, parse_overrides
    from .eval.benchmark import PROMPT_SETS

    grid_path = resolve_grid_path(path)
    raw = load_yaml(grid_path)
    where = str(grid_path)
    for key in raw:
        if key not in GRID_KEYS:
            raise ConfigError(f"{where}: unknown grid key '{key}' — {_closest(key, list(GRID_KEYS))}")
    if not raw.get("recipe"):
        raise ConfigError(f"{where}: recipe is missing — name the base recipe of every cell, e.g. recipe: "
                          "image_sds.yaml")
    axes_raw = raw.get("axes") or {}
    if not isinstance(axes_raw, DictConfig):
        raise ConfigError(f"{where}: axes must be a mapping of axis name → values")
    axes: dict[str, dict[str, dict]] = {}
    for axis, values in axes_raw.items():
        if not isinstance(values, DictConfig) or not values:
            raise ConfigError(f"{where}: axes.{axis} must map each value's name to its overrides (a list) or to a "
                              f"mapping with {', '.join(VALUE_KEYS)}")
        axes[str(axis)] = {str(v): _value_spec(str(axis), str(v), spec, where) for v, spec in values.items()}
    seeds = raw.get("seeds", [0])
    seeds = list(seeds) if isinstance(seeds, (ListConfig, list)) else [seeds]
    if not seeds or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds):
        raise ConfigError(f"{where}: seeds must be a list of integers ≥ 0, got {list(seeds)}")
    metrics = dict(METRIC_DEFAULTS)
    if raw.get("metrics") is not None and not isinstance(raw.get("metrics"), DictConfig):
        raise ConfigError(f"{where}: metrics must be a mapping, e.g. metrics: {{psnr_threshold: 18}}")
    for key, value in (OmegaConf.to_container(raw.get("metrics")) if raw.get("metrics") else {}).items():
        if key not in METRIC_DEFAULTS:
            raise ConfigError(f"{where}: unknown key 'metrics.{key}' — {_closest(key, list(METRIC_DEFAULTS))}")
        metrics[key] = float(value)
    overrides = raw.get("overrides") or []
    if isinstance(overrides, str):
        overrides = [overrides]
    overrides = [str(o) for o in overrides]
    base_config = OmegaConf.to_container(raw.get("config")) if raw.get("config") else None
    if base_config is not None and not isinstance(base_config, dict):
        raise ConfigError(f"{where}: config must be a mapping of config keys (merged onto the recipe)")
    parse_overrides(overrides + list(extra_overrides))  # malformed overrides fail with one line, before any work

    recipes: dict[str, Any] = {}

    def recipe(name: str, key: str) -> Any:
        if name not in recipes:
            try:
                recipes[name] = load_recipe(name)
            except ConfigError as err:
                raise ConfigError(f"{where}: {key}: {err}") from None
        return recipes[name]

    base = recipe(str(raw.recipe), "recipe")
    prompt_items = raw.get("prompts")
    if prompt_items is None or (isinstance(prompt_items, (ListConfig, list)) and not prompt_items):
        prompts = [str(base.get("prompt") or "")]
    else:
        items = list(prompt_items) if isinstance(prompt_items, (ListConfig, list)) else [prompt_items]
        prompts = []
        for item in items:
            prompts.extend(PROMPT_SETS.get(str(item), [str(item)]))
    if not all(p.strip() for p in prompts):
        raise ConfigError(f"{where}: prompts is empty and the recipe has no prompt — give prompts: [...]")

    name = str(raw.get("name") or grid_path.stem)
    cells: list[Cell] = []
    combos = list(itertools.product(*[list(v.items()) for v in axes.values()])) if axes else [()]
    for combo in combos:
        values = {axis: value for axis, (value, _) in zip(axes, combo)}
        cfg_raw = base
        if base_config:
            cfg_raw = _merge_child(cfg_raw, base_config)
        cell_overrides = list(overrides)
        for axis, (value, spec) in zip(axes, combo):
            key = f"axes.{axis}.{value}"
            if spec["recipe"]:
                cfg_raw = recipe(str(spec["recipe"]), f"{key}.recipe")
                if base_config:
                    cfg_raw = _merge_child(cfg_raw, base_config)
            if spec["loss_recipe"]:
                donor = recipe(str(spec["loss_recipe"]), f"{key}.loss_recipe")
                cfg_raw = cfg_raw.copy()
                for section in ("guidance", "loss"):
                    if section in donor:
                        cfg_raw[section] = donor[section]
                    elif section in cfg_raw:
                        cfg_raw.pop(section)
            if spec["config"]:
                cfg_raw = _merge_child(cfg_raw, spec["config"])
            cell_overrides += spec["overrides"]
        for prompt in prompts:
            for seed in seeds:
                items = cell_overrides + list(extra_overrides) + [f"seed={seed}", f"prompt={prompt!r}"]
                label = " ".join([f"{a}={v}" for a, v in values.items()] + [f"seed={seed}", f"prompt={prompt!r}"])
                try:
                    cfg = load_config(None, items, base=cfg_raw)
                except ConfigError as err:
                    where_cell = ", ".join(f"axes.{a}.{v}" for a, v in values.items()) or "overrides"
                    raise ConfigError(f"{where} ({where_cell}): {err}") from None
                plain = OmegaConf.to_container(cfg, resolve=True)
                plain.pop("output_dir", None)
                digest = _short_hash({k: v for k, v in plain.items() if k not in PRESENTATION_KEYS})
                cid = "-".join([_slug("_".join(values.values()), 40) or "base", f"s{seed}", _slug(prompt), digest])
                kind = "2d" if cfg.representation.name == "image" else "3d"
                cells.append(Cell(cid, label, values, int(seed), prompt, plain, kind, dict(metrics)))
    return Grid(name, grid_path, {a: list(v) for a, v in axes.items()}, [int(s) for s in seeds], prompts, cells,
                metrics)


# ------------------------------------------------------------------------------------------------ running a cell
_TRUTH: dict[tuple, Any] = {}


def _cached_prior(prior_cfg: Any, device: torch.device):
    """Frozen priors hold no state a run changes: one per (config, device) in this process (the engine's workers
    too: dreamkit.priors.configs.cached_prior)."""
    from .priors.configs import cached_prior

    return cached_prior(prior_cfg, device)


def _crn_seed(seed: int, step: int) -> int:
    return (int(seed) * 1_000_003 + int(step) * 7919 + 12_345) % (2**63 - 1)


class CommonRandomNumbers:
    """Stands in for the system's guidance in a 2D cell: each step's timesteps and noise come from a generator seeded
    by (seed, step) and are handed to the guidance, so that every loss with the same seed sees the same t and ε."""

    def __init__(self, guidance: Any, seed: int):
        self.guidance = guidance
        self.seed = int(seed)

    def __getattr__(self, name: str) -> Any:  # parameter_groups, timer, loss_names, ... of the guidance
        return getattr(self.__dict__["guidance"], name)

    def __call__(self, out: Any, batch: Any, step: int, generator: Optional[torch.Generator] = None):
        guidance = self.guidance
        prior = guidance.prior
        x = out.extras.get("prior_x") if out.extras else None
        size = len(batch)
        if x is not None:
            shape, device = tuple(x.shape), x.device
        else:
            side = int(prior.resolution)
            shape, device = (size, int(prior.channels), side, side), out.rgb.device
        gen = torch.Generator(device=device).manual_seed(_crn_seed(self.seed, step))
        t = guidance.sample_timesteps(size, step, gen, device, batch.layout)
        noise = torch.randn(shape, generator=gen, device=device)
        return guidance(out, batch, step, generator=generator, t=t, noise=noise)


def _chroma(image: torch.Tensor, mask: torch.Tensor) -> float:
    """Mean chroma (max − min over RGB) of ``image`` [H, W, 3] where ``mask`` [H, W]; NaN for an empty mask."""
    if not bool(mask.any()):
        return math.nan
    rgb = image[mask]
    return float((rgb.amax(-1) - rgb.amin(-1)).mean())


def _foreground(image: torch.Tensor, background: Sequence[float], threshold: float = 0.12) -> torch.Tensor:
    bg = torch.tensor(list(background), dtype=image.dtype)
    return (image - bg).abs().amax(-1) > threshold


def _truth_views(prompt: str, side: int):
    """(scene, renders [V, side, side, 3]) of a single-object world prompt over 168 views (elevation -10° to 45°,
    every 15° of azimuth, the world benchmark's judge library), shaded as the world's renders; None otherwise."""
    from .world import parse_prompt

    key = (prompt, side)
    if key in _TRUTH:
        return _TRUTH[key]
    scene = parse_prompt(prompt)
    value = None
    if scene is not None and scene.kind == "single":
        from .cameras import cameras_from_spherical
        from .eval.world_metrics import BACKGROUND
        from .render.raster import render_mesh_colors

        el = torch.tensor([-10.0, 0.0, 10.0, 20.0, 30.0, 40.0, 45.0]).repeat_interleave(24)
        az = torch.arange(0, 360, 15, dtype=torch.float32).repeat(7)
        cams = cameras_from_spherical(el, az, torch.full_like(el, 2.75), torch.full_like(el, 40.0), side, side)
        verts, faces, colors = scene.mesh()
        rgb, _, _ = render_mesh_colors(verts, faces, cams, face_colors=colors, background=BACKGROUND)
        value = (scene, rgb.clamp(0, 1))
    _TRUTH[key] = value
    return value


#: the judge segments the object from the world's grey background; the truth's objects cover at most 25% of a
#: 32² frame over the judge's 168 views, so an image whose "foreground" covers more than this has lost its background
#: (a tinted or noisy field the judge would take for one full-frame square) and gets no verdict
MAX_FOREGROUND = 0.75


def image_metrics_world(image: torch.Tensor, prompt: str) -> dict:
    """2D metrics of an image [H, W, 3] for a tiny-world prompt: the judge's verdict, the RMSE to the nearest truth
    render, chroma against the truth's."""
    from .eval.world_metrics import BACKGROUND, classify_sample

    row: dict = {}
    judged = classify_sample(image.permute(2, 0, 1))
    row["foreground"] = judged["foreground"]
    row["framed"] = judged["foreground"] <= MAX_FOREGROUND
    row["judged"] = f"{judged['colour']} {judged['shape']}" if row["framed"] else "no background"
    row["shape_iou"] = judged["shape_iou"]
    truth = _truth_views(prompt, int(image.shape[0]))
    mask = _foreground(image, BACKGROUND)
    row["chroma"] = _chroma(image, mask)
    if truth is None:
        return row
    scene, views = truth
    row["verdict"] = row["framed"] and judged["shape"] == scene.shapes[0] and judged["colour"] == scene.colours[0]
    rmse = ((views - image[None]) ** 2).flatten(1).mean(1).sqrt()
    nearest = int(torch.argmin(rmse))
    row["truth_rmse"] = float(rmse[nearest])
    row["chroma_truth"] = _chroma(views[nearest], _foreground(views[nearest], BACKGROUND))
    row["saturation"] = row["chroma"] / row["chroma_truth"] if row["chroma_truth"] else math.nan
    return row


def image_metrics_oracle(image: torch.Tensor, targets: torch.Tensor, labels: Sequence[str], allowed: Sequence[int],
                         background: Sequence[float], psnr_threshold: float) -> dict:
    """2D metrics of an image [H, W, 3] against the oracle's targets [K, H, W, 3] at the same camera: the nearest of
    the ``allowed`` targets (the prompt's), its RMSE and PSNR, ``covers`` at ``psnr_threshold``, chroma on the
    target's foreground against the target's."""
    mse = ((targets - image[None]) ** 2).flatten(1).mean(1)
    allowed = list(allowed)
    k = allowed[int(torch.argmin(mse[allowed]))]
    psnr = float(-10 * torch.log10(mse[k].clamp_min(1e-10)))
    mask = _foreground(targets[k], background)
    chroma, chroma_target = _chroma(image, mask), _chroma(targets[k], mask)
    return {"target": k, "target_label": labels[k], "rmse": float(mse[k].sqrt()), "psnr": psnr,
            "covers": psnr >= psnr_threshold, "chroma": chroma, "chroma_truth": chroma_target,
            "saturation": chroma / chroma_target if chroma_target else math.nan}


def _save_png(image: torch.Tensor, path: Path) -> str:
    from .imageio_utils import save_image_grid

    save_image_grid(image[None].clamp(0, 1), path, columns=1)
    return path.name


def _run_image_cell(cell: Cell, cfg: Any, work: Path) -> dict:
    """A 2D cell: the system's training step in a plain loop, common random numbers, metrics of every particle."""
    from .bench import build_system
    from .components import resolve_device

    device = resolve_device(str(cfg.device))
    prior = _cached_prior(cfg.prior, device)
    system, optimizer = build_system(cfg, device, prior)
    system.check_prompts()
    object.__setattr__(system, "_guidance", CommonRandomNumbers(system.guidance, int(cfg.seed)))
    steps = int(cfg.trainer.max_steps)
    t0 = time.perf_counter()
    for step in range(steps):
        system.optimization_step(step, optimizer)
        if device.type == "cpu" or step == steps - 1:
            system.check_nonfinite(step)
    fit_s = time.perf_counter() - t0
    members = system._members()
    images = [m.view().float().cpu().clamp(0, 1) for m in members]
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    targets = labels = allowed = None
    if cfg.prior.type == "oracle":
        cams = system.sampler.sample_cameras(steps)[0:1].to(prior.alphas_cumprod.device)
        side = images[0].shape[0]
        cams = cams.with_resolution(side, side)
        targets = torch.stack([prior.target_images(cams, k)[0].permute(1, 2, 0).cpu()
                               for k in range(prior.num_targets)])
        labels = list(prior.labels)
        weights = system.text_cond.cond[0].cpu()
        allowed = [k for k in range(prior.num_targets) if float(weights[k]) > 0]
        for k in allowed:
            _save_png(targets[k], work / f"target{k}.png")
    for i, image in enumerate(images):
        row: dict = {"particle": i, "image": f"{work.name}/{_save_png(image, work / f'p{i}.png')}"}
        if targets is not None:
            row.update(image_metrics_oracle(image, targets, labels, allowed, list(cfg.prior.background),
                                            float(cell.metrics.get("psnr_threshold", 18.0))))
        else:
            row.update(image_metrics_world(image, cell.prompt))
        rows.append(row)
    return {"rows": rows, "fit_s": fit_s, "steps": steps,
            "targets": [f"{work.name}/target{k}.png" for k in (allowed or [])]}


def _resumable_run(runs: Path, max_steps: int) -> tuple[Optional[Path], int]:
    """(the newest run folder under ``runs`` with a checkpoint, its step) — a fit this cell started earlier."""
    from .run import checkpoint_step, run_folders

    best, best_step = None, -1
    for run in run_folders(runs) if runs.is_dir() else []:
        step = checkpoint_step(run)
        if step >= 0 and (best is None or run.stat().st_mtime > best.stat().st_mtime):
            best, best_step = run, step
    return best, best_step


def _run_fit_cell(cell: Cell, cfg: Any, work: Path) -> dict:
    """A 3D cell: ``dreamkit fit`` (continued from its checkpoint when an earlier attempt was killed), then the world
    benchmark's scores (:func:`dreamkit.eval.benchmark._score_run`) and the saturation of its turntable frames."""
    from .components import resolve_device
    from .eval.benchmark import _score_run
    from .run import fit, slugify
    from .world import parse_prompt

    scene = parse_prompt(cell.prompt)
    if cfg.prior.type == "oracle" and scene is not None:  # the ground truth is the oracle's target (as dreamkit eval)
        gt = scene.export(work / "gt" / f"{slugify(cell.prompt)}.ply")
        cfg.prior.targets = [{"mesh": str(gt), "label": cell.prompt}]
    cfg.output_dir = str(work / "runs")
    steps = int(cfg.trainer.max_steps)
    t0 = time.perf_counter()
    run, done = _resumable_run(work / "runs", steps)
    if run is not None and done >= steps:
        run_dir = run
    elif run is not None:
        print(f"  continuing {run} from step {done}", flush=True)
        run_dir = fit(cfg, resume_dir=run, export=False, prior=_cached_prior(cfg.prior, resolve_device(cfg.device)))
    else:
        run_dir = fit(cfg, export=False, prior=_cached_prior(cfg.prior, resolve_device(str(cfg.device))))
    fit_s = time.perf_counter() - t0
    row: dict = {"particle": 0, "run_dir": str(run_dir)}
    frames = None
    if scene is not None:
        frames = _score_run(run_dir, scene, row)
        row["judged"] = f"{row.get('colour')} {row.get('nearest_shape')}" if scene.kind == "single" else None
        row.update(_frames_saturation(frames, scene, list(cfg.background.color)))
    else:
        from .components import load_representation_from_checkpoint, resolve_device
        from .export.video import render_turntable
        from .run import load_run

        _, run_cfg, ckpt = load_run(run_dir)
        device = resolve_device(str(run_cfg.device))
        model = load_representation_from_checkpoint(run_cfg, ckpt, device)
        frames = render_turntable(model, frames=8, resolution=96,
                                  background=torch.tensor(list(run_cfg.background.color)), device=device)
    work.mkdir(parents=True, exist_ok=True)
    row["image"] = f"{work.name}/{_save_png(frames[0], work / 'p0.png')}"
    return {"rows": [row], "fit_s": fit_s, "steps": steps, "targets": []}


def _frames_saturation(frames: torch.Tensor, scene: Any, background: Sequence[float]) -> dict:
    """Chroma of a fit's 8 turntable frames (96², elevation 15°, the export's orbit) against the truth's on the same
    orbit, each on its own foreground."""
    from .cameras import orbit_cameras
    from .render.raster import render_mesh_colors

    n, side = frames.shape[0], frames.shape[1]
    cams = orbit_cameras(n, side, side, elevation=15.0, distance=2.75, fovy=40.0)
    verts, faces, colors = scene.mesh()
    truth, _, _ = render_mesh_colors(verts, faces, cams, face_colors=colors, background=background)
    fit_mask = _foreground(frames.reshape(-1, side, 3), background)
    truth_mask = _foreground(truth.reshape(-1, side, 3), background)
    chroma = _chroma(frames.reshape(-1, side, 3), fit_mask)
    chroma_truth = _chroma(truth.clamp(0, 1).reshape(-1, side, 3), truth_mask)
    return {"chroma": chroma, "chroma_truth": chroma_truth,
            "saturation": chroma / chroma_truth if chroma_truth else math.nan}


def _world_meshes(cfg: Any, folder: Path) -> None:
    """Oracle targets given as ``world:<prompt>`` (e.g. ``world:a red cube``): the world scene exported once into
    ``folder`` and used by path."""
    if cfg.prior.type != "oracle":
        return
    from .run import slugify
    from .world import nearest_prompts, parse_prompt

    targets = []
    for target in cfg.prior.targets:
        target = dict(target)
        mesh = str(target.get("mesh", ""))
        if mesh.startswith("world:"):
            text = mesh[len("world:"):].strip()
            scene = parse_prompt(text)
            if scene is None:
                raise ConfigError(f"prior.targets mesh {mesh!r}: not a tiny-world prompt — nearest: "
                                  f"{', '.join(nearest_prompts(text))}")
            path = folder / f"{slugify(text)}.ply"
            if not path.is_file():
                scene.export(path)
            target["mesh"] = str(path)
        targets.append(target)
    cfg.prior.targets = targets


def run_cell(cell: Cell, grid_dir: Path) -> dict:
    """Run one cell and return its result (rows of metrics, one per particle; wall time). Writes its work files under
    ``<grid_dir>/cells/<cell id>/`` and nothing else: the caller records the result (:func:`write_result`), so a
    scheduler may run cells anywhere that sees ``grid_dir``."""
    from omegaconf import OmegaConf

    from .config import load_config

    grid_dir = Path(grid_dir)
    work = grid_dir / "cells" / cell.id
    cfg = load_config(None, [], base=OmegaConf.create(cell.config))
    _world_meshes(cfg, grid_dir / "meshes")
    if cell.kind == "2d":  # the process's shared prior is loaded outside the cell's time (once per process)
        from .components import resolve_device
        from .system import DreamSystem  # noqa: F401  (imports too: Lightning takes seconds the first time)

        _cached_prior(cfg.prior, resolve_device(str(cfg.device)))
    t0 = time.perf_counter()
    result: dict = {"id": cell.id, "label": cell.label, "axes": dict(cell.axes), "seed": cell.seed,
                    "prompt": cell.prompt, "kind": cell.kind}
    try:
        out = _run_image_cell(cell, cfg, work) if cell.kind == "2d" else _run_fit_cell(cell, cfg, work)
        result.update(out)
    except DreamkitError as err:
        if getattr(err, "exit_code", 2) >= 128:  # interrupted: not a result
            raise
        message = str(err).splitlines()[0] if str(err) else type(err).__name__
        result.update({"rows": [{"particle": 0}], "error": message})
    result["wall_s"] = time.perf_counter() - t0
    result["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    return result


def result_path(grid_dir: Path, cell: Cell) -> Path:
    return Path(grid_dir) / "cells" / f"{cell.id}.json"


def write_result(grid_dir: Path, result: dict) -> Path:
    """``cells/<id>.json``, atomically (a temporary file renamed over it): a kill never leaves half a result."""
    path = Path(grid_dir) / "cells" / f"{result['id']}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as f:
        json.dump(result, f, indent=1, default=_json_default)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def _json_default(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.item() if value.numel() == 1 else value.tolist()
    if isinstance(value, Path):
        return str(value)
    return str(value)


def read_result(grid_dir: Path, cell: Cell) -> Optional[dict]:
    path = result_path(grid_dir, cell)
    if not path.is_file():
        return None
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None  # unreadable: run the cell again


# ---------------------------------------------------------------------------------------------------- the driver
def _fmt_s(seconds: Optional[float]) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


class _Progress:
    """A progress bar over the cells (rich, in a terminal) or one line per cell: done, running, ETA (the mean time of
    the cells run so far × the cells left)."""

    def __init__(self, total: int, done: int, pending: int, stream=None):
        self.total, self.done, self.pending = total, done, pending
        self.durations: list[float] = []
        self.stream = stream or sys.stdout
        self.bar = None
        if getattr(self.stream, "isatty", lambda: False)():
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.bar = Progress(TextColumn("ablate"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                                TextColumn("ETA {task.fields[eta]}"), TextColumn("{task.fields[running]}"),
                                redirect_stdout=True, redirect_stderr=True)
            self.task = self.bar.add_task("cells", total=total, completed=done, eta="?", running="")
            self.bar.start()

    def eta(self) -> Optional[float]:
        if not self.durations:
            return None
        return sum(self.durations) / len(self.durations) * self.pending

    def start(self, index: int, cell: Cell) -> None:
        if self.bar is not None:
            self.bar.update(self.task, running=f"running {cell.label}")
        else:
            print(f"[{self.done + 1}/{self.total}] run {cell.label}", file=self.stream, flush=True)

    def finish(self, cell: Cell, seconds: float, note: str = "") -> None:
        self.done += 1
        self.pending -= 1
        self.durations.append(seconds)
        eta = _fmt_s(self.eta()) if self.pending else "0s"
        if self.bar is not None:
            self.bar.update(self.task, completed=self.done, eta=eta, running="")
            self.bar.console.print(f"done {cell.label} in {seconds:.1f}s{note}")
        else:
            print(f"[{self.done}/{self.total}] done {cell.label} in {seconds:.1f}s{note} — ETA {eta}",
                  file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def run_grid(grid: Grid, out_dir: Path, limit: Optional[int] = None, retry_failed: bool = False,
             command: str = "", runner: Callable[[Cell, Path], dict] = run_cell, stream=None, jobs: int = 1,
             address: Optional[str] = None) -> Path:
    """Run the pending cells of ``grid`` (``limit``: at most that many), recording each result as it finishes, then
    write the tables, plots and image grid. Finished cells are kept and skipped. ``jobs`` > 1 (or ``address``, a Ray
    cluster) runs that many cells at once on the engine's workers (:mod:`dreamkit.engine`; each keeps its priors),
    else one at a time in this process."""
    from collections import deque

    from .engine import Engine, Task, graceful_signals

    stream = stream or sys.stdout
    out_dir = Path(out_dir)
    (out_dir / "cells").mkdir(parents=True, exist_ok=True)
    _write_grid_copy(grid, out_dir)
    results: dict[str, dict] = {}
    pending: list[Cell] = []
    for cell in grid.cells:
        previous = read_result(out_dir, cell)
        if previous is not None and not (retry_failed and previous.get("error")):
            results[cell.id] = previous
        else:
            pending.append(cell)
    total = len(grid.cells)
    print(f"ablate {grid.name}: {total} cells ({_describe_axes(grid)}) → {out_dir}", file=stream, flush=True)
    if results:
        print(f"resuming: {len(results)} of {total} cells finished earlier (kept, skipped), {len(pending)} to run",
              file=stream, flush=True)
    if limit is not None:
        pending = pending[:max(0, int(limit))]
    parallel = int(jobs) > 1 or address is not None
    engine = Engine(jobs=int(jobs), address=address, cpus_per_job=1.0)
    cells = {cell.id: cell for cell in pending}
    queue = deque(Task(cell.id, runner, (cell, out_dir), meta={"index": i},
                       log=str(out_dir / "cells" / f"{cell.id}.log") if parallel else None)
                  for i, cell in enumerate(pending))
    interrupted: list = []

    def start(task: Task) -> None:
        progress.start(task.meta["index"], cells[task.key])

    def finish(outcome) -> None:
        cell = cells[outcome.key]
        if outcome.status in ("interrupted", "lost", "busy"):  # not a result: the cell runs again next time
            interrupted.append(outcome)
            engine.stop()
            return
        result = outcome.value if outcome.status == "ok" else {
            "id": cell.id, "label": cell.label, "axes": dict(cell.axes), "seed": cell.seed, "prompt": cell.prompt,
            "kind": cell.kind, "rows": [{"particle": 0}], "error": outcome.error, "wall_s": outcome.seconds,
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}
        write_result(out_dir, result)
        results[cell.id] = result
        note = f" — error: {result['error']}" if result.get("error") else ""
        progress.finish(cell, float(result.get("wall_s", 0.0)), note)
        write_tables(grid, out_dir, results, command, plots=False)

    progress = _Progress(total, len(results), len(pending), stream)
    try:
        with engine, graceful_signals(engine, "grid"):
            if parallel:
                print(f"{len(pending)} cells, {engine.size} at a time", file=stream, flush=True)
            engine.run(queue, start, finish)
    finally:
        progress.close()
    if interrupted:
        from .errors import Interrupted

        raise Interrupted(f"interrupted ({interrupted[0].error or interrupted[0].status})", 2)
    write_tables(grid, out_dir, results, command, plots=True)
    left = total - len(results)
    tail = f"; {left} cell(s) not run yet (run the same command again)" if left else ""
    print(f"wrote {out_dir / 'results.md'}, results.csv, metrics.png, images.png{tail}", file=stream, flush=True)
    return out_dir


def _describe_axes(grid: Grid) -> str:
    parts = [f"{len(values)} {axis}" for axis, values in grid.axes.items()]
    parts += [f"{len(grid.prompts)} prompt(s)", f"{len(grid.seeds)} seed(s)"]
    return " × ".join(parts)


def _write_grid_copy(grid: Grid, out_dir: Path) -> None:
    """The grid file as it was run, beside the results (``grid.yaml``)."""
    try:
        text = grid.path.read_text()
    except OSError:
        return
    target = out_dir / "grid.yaml"
    tmp = out_dir / f".grid.yaml.tmp-{os.getpid()}"
    tmp.write_text(text)
    os.replace(tmp, target)


# ---------------------------------------------------------------------------------------------------- the tables
def _rows(grid: Grid, results: dict[str, dict]) -> list[dict]:
    """One flat row per finished cell and particle, in the grid's order."""
    rows = []
    for cell in grid.cells:
        res = results.get(cell.id)
        if res is None:
            continue
        for r in res.get("rows") or [{}]:
            row = {"cell": cell.id, **cell.axes, "seed": cell.seed, "prompt": cell.prompt}
            row.update(r)
            row["wall_s"] = res.get("wall_s")
            row["fit_s"] = res.get("fit_s")
            if res.get("error"):
                row["error"] = res["error"]
            rows.append(row)
    return rows


def _number(value: Any) -> Optional[float]:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)) and math.isfinite(float(value)):
        return float(value)
    return None


def _diversity(grid: Grid, results: dict[str, dict], out_dir: Path) -> dict[tuple, dict]:
    """(group, prompt) → modes covered (oracle), distinct judged classes, mean pairwise RMSE of the images, over the
    seeds and particles of that prompt."""
    import imageio.v2 as imageio

    groups: dict[tuple, list[tuple[Cell, dict]]] = {}
    for cell in grid.cells:
        res = results.get(cell.id)
        if res is None or res.get("error"):
            continue
        groups.setdefault((tuple(cell.axes.values()), cell.prompt), []).append((cell, res))
    out: dict[tuple, dict] = {}
    for key, members in groups.items():
        rows = [r for _, res in members for r in res.get("rows", [])]
        entry: dict = {"n": len(rows)}
        if any("covers" in r for r in rows):
            entry["modes"] = len({r["target"] for r in rows if r.get("covers")})
        if any(r.get("judged") for r in rows):
            entry["classes"] = len({r["judged"] for r in rows if r.get("judged")})
        if members[0][0].kind == "2d":
            images = []
            for r in rows:
                path = out_dir / "cells" / r["image"] if r.get("image") else None
                if path is not None and path.is_file():
                    images.append(torch.from_numpy(imageio.imread(path)).float()[..., :3] / 255.0)
            if len(images) > 1:
                stack = torch.stack(images).flatten(1)
                dists = torch.cdist(stack, stack) / math.sqrt(stack.shape[1])
                n = len(images)
                entry["spread"] = float(dists.sum() / (n * (n - 1)))
        out[key] = entry
    return out


def _aggregate(grid: Grid, rows: list[dict], diversity: dict[tuple, dict]) -> tuple[list[dict], list[str], dict]:
    """Per group (axis values): {metric: (mean, std, n, is_count)} over seeds, each seed's value being the mean over
    prompts and particles (booleans: their count per seed); diversity: mean over prompts."""
    metrics = [m for m, _ in HEADLINE if m not in DIVERSITY and any(_number(r.get(m)) is not None
                                                                     and not isinstance(r.get(m), str) for r in rows)]
    div_metrics = [m for m in DIVERSITY if any(m in d for d in diversity.values())]
    counts = {m for m in metrics if any(isinstance(r.get(m), bool) for r in rows)}
    per_seed_n: dict[str, int] = {}
    table = []
    group_keys = list(dict.fromkeys(tuple(c.axes.values()) for c in grid.cells))
    for gkey in group_keys:
        mine = [r for r in rows if tuple(r.get(a) for a in grid.axes) == gkey]
        entry: dict = {"group": gkey, "cells": len({r["cell"] for r in mine}),
                       "errors": len({r["cell"] for r in mine if r.get("error")})}
        for m in metrics:
            per_seed = []
            for seed in grid.seeds:
                vals = [_number(r.get(m)) for r in mine if r["seed"] == seed]
                vals = [v for v in vals if v is not None]
                if not vals:
                    continue
                if m in counts:
                    per_seed.append(sum(vals))
                    per_seed_n[m] = max(per_seed_n.get(m, 0), len(vals))
                else:
                    per_seed.append(sum(vals) / len(vals))
            if per_seed:
                mean = sum(per_seed) / len(per_seed)
                std = math.sqrt(sum((v - mean) ** 2 for v in per_seed) / (len(per_seed) - 1)) if len(per_seed) > 1 \
                    else 0.0
                entry[m] = (mean, std, len(per_seed))
        for m in div_metrics:
            vals = [d[m] for (g, _), d in diversity.items() if g == gkey and m in d]
            if vals:
                mean = sum(vals) / len(vals)
                std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else 0.0
                entry[m] = (mean, std, len(vals))
        table.append(entry)
    return table, metrics + div_metrics, {"counts": counts, "per_seed_n": per_seed_n}


def _cell(value: Any) -> str:
    if isinstance(value, tuple):
        mean, std, n = value
        return f"{mean:.3g} ± {std:.2g}" if n > 1 else f"{mean:.3g}"
    return "" if value is None else str(value)


def write_tables(grid: Grid, out_dir: Path, results: dict[str, dict], command: str = "", plots: bool = True) -> None:
    """results.csv, results.md and (``plots``) metrics.png and images.png from the finished cells."""
    out_dir = Path(out_dir)
    rows = _rows(grid, results)
    diversity = _diversity(grid, results, out_dir)
    _write_csv(rows, grid, out_dir / "results.csv")
    table, metrics, info = _aggregate(grid, rows, diversity)
    _write_md(grid, out_dir, results, rows, table, metrics, info, diversity, command, plots)
    if plots and rows:
        _plot_metrics(grid, table, metrics, info, out_dir / "metrics.png")
        _image_grid(grid, results, out_dir, out_dir / "images.png")


def _write_csv(rows: list[dict], grid: Grid, path: Path) -> None:
    first = ["cell", *grid.axes, "seed", "prompt", "particle"]
    known = [m for m, _ in HEADLINE] + ["judged", "framed", "target", "target_label", "chroma", "chroma_truth",
                                        "shape_iou", "foreground", "fit_s", "error", "image"]
    extra = [k for r in rows for k in r if k not in first and k not in known]
    columns = first + [k for k in known if any(k in r for r in rows)] + list(dict.fromkeys(extra))
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for r in rows:
            writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
    os.replace(tmp, path)


def _write_md(grid: Grid, out_dir: Path, results: dict, rows: list[dict], table: list[dict], metrics: list[str],
              info: dict, diversity: dict, command: str, plots: bool) -> None:
    arrows = dict(HEADLINE)
    done = sum(1 for c in grid.cells if c.id in results)
    wall = sum(float(results[c.id].get("wall_s") or 0) for c in grid.cells if c.id in results)
    kinds = sorted({c.kind for c in grid.cells})
    first = grid.cells[0].config if grid.cells else {}
    prior = first.get("prior", {})
    prior_text = f"{prior.get('type')}" + (f" {prior.get('name')}" if prior.get("name") else "")
    lines = [f"# dreamkit ablate — {grid.name}", ""]
    if command:
        lines += [f"`{command}`", ""]
    lines += [f"- {len(grid.cells)} cells: {_describe_axes(grid)}; {done} finished; cell time in all "
              f"{_fmt_s(wall)} ({', '.join(kinds)}; prior {prior_text})",
              f"- seeds {', '.join(map(str, grid.seeds))}; prompts: {', '.join(repr(p) for p in grid.prompts)}",
              "- each metric: mean ± std over seeds of each seed's mean over prompts and particles; a count "
              "(`n/N`) for yes/no metrics; diversity (modes, classes, spread) across the seeds and particles of a "
              "prompt, mean ± std over prompts. ↑ higher is better, ↓ lower, →1 nearest 1 (saturation: the result's "
              "chroma over the target's); classes and spread have no better side (a seed judged another class, or "
              "noise, adds to them).", ""]
    if grid.metrics.get("psnr_threshold") and any("covers" in r for r in rows):
        lines.insert(-1, f"- covers: PSNR to the nearest target ≥ {grid.metrics['psnr_threshold']:g} dB")
    head = list(grid.axes) or ["cells"]
    cols = []
    for m in metrics:
        suffix = f" (of {info['per_seed_n'][m]})" if m in info["counts"] and m in info["per_seed_n"] else ""
        cols.append(f"{m}{suffix} {arrows.get(m, '')}".strip())
    lines.append("| " + " | ".join(head + cols + ["errors"]) + " |")
    lines.append("|" + "---|" * (len(head) + len(cols) + 1))
    for entry in table:
        label = list(entry["group"]) if grid.axes else ["all"]
        lines.append("| " + " | ".join(label + [_cell(entry.get(m)) for m in metrics] + [str(entry["errors"])]) + " |")
    if len(grid.prompts) > 1 and rows:
        lines += ["", "## Per prompt (mean over seeds and particles)", ""]
        per = [m for m in metrics if m not in DIVERSITY]
        lines.append("| " + " | ".join(head + ["prompt"] + per + [m for m in DIVERSITY if m in metrics]) + " |")
        lines.append("|" + "---|" * (len(head) + 1 + len(per) + len([m for m in DIVERSITY if m in metrics])))
        for cell_group in dict.fromkeys(tuple(c.axes.values()) for c in grid.cells):
            for prompt in grid.prompts:
                mine = [r for r in rows if tuple(r.get(a) for a in grid.axes) == cell_group and r["prompt"] == prompt]
                if not mine:
                    continue
                vals = []
                for m in per:
                    nums = [_number(r.get(m)) for r in mine]
                    nums = [v for v in nums if v is not None]
                    vals.append(f"{sum(nums) / len(nums):.3g}" if nums else "")
                div = diversity.get((cell_group, prompt), {})
                vals += [f"{div[m]:.3g}" if m in div else "" for m in DIVERSITY if m in metrics]
                lines.append("| " + " | ".join(list(cell_group) + [prompt] + vals) + " |")
    errors = [(c, results[c.id]["error"]) for c in grid.cells if c.id in results and results[c.id].get("error")]
    if errors:
        lines += ["", "## Errors", ""] + [f"- {c.label}: {e}" for c, e in errors]
    lines += ["", "`results.csv`: every cell and particle; `cells/<id>.json`: each cell's result; "
              "`cells/<id>/`: its images (2D) or its run folder (3D)."]
    if plots:
        lines += ["", "![metrics](metrics.png)", "", "![images](images.png)"]
    lines.append("")
    tmp = out_dir / f".results.md.tmp-{os.getpid()}"
    tmp.write_text("\n".join(lines))
    os.replace(tmp, out_dir / "results.md")


# ----------------------------------------------------------------------------------------------------- the plots
def _plot_metrics(grid: Grid, table: list[dict], metrics: list[str], info: dict, path: Path) -> Path:
    """One horizontal bar chart per metric (a bar per group, ± the std over seeds): matplotlib when installed, else
    drawn with Pillow."""
    labels = [" ".join(e["group"]) or "all" for e in table]
    series = []
    for m in metrics:
        vals = [e.get(m) for e in table]
        if all(v is None for v in vals):
            continue
        series.append((m, [v[0] if v else math.nan for v in vals], [v[1] if v else 0.0 for v in vals]))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return _plot_pillow(labels, series, path, grid.name)
    cols = min(3, max(1, len(series)))
    nrows = math.ceil(len(series) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4.2 * cols, 0.35 * len(labels) * nrows + 1.2 * nrows),
                             squeeze=False)
    arrows = dict(HEADLINE)
    for ax, (m, means, stds) in zip(axes.flat, series):
        y = list(range(len(labels)))
        ax.barh(y, means, xerr=stds, color="#4c72b0", ecolor="#333333", capsize=2)
        ax.set_yticks(y)
        ax.set_yticklabels(labels, fontsize=8)
        ax.invert_yaxis()
        ax.set_title(f"{m} {arrows.get(m, '')}", fontsize=9)
        ax.tick_params(axis="x", labelsize=7)
    for ax in list(axes.flat)[len(series):]:
        ax.axis("off")
    fig.suptitle(f"dreamkit ablate — {grid.name} (mean ± std over seeds)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _plot_pillow(labels: list[str], series: list, path: Path, title: str) -> Path:
    from PIL import Image, ImageDraw

    label_w, bar_w, row_h, pad = 8 * max([len(s) for s in labels] + [4]) + 10, 220, 14, 28
    panel_h = pad + row_h * len(labels) + 10
    cols = min(3, max(1, len(series)))
    nrows = max(1, math.ceil(len(series) / cols))
    panel_w = label_w + bar_w + 60
    image = Image.new("RGB", (panel_w * cols, panel_h * nrows + 24), "white")
    draw = ImageDraw.Draw(image)
    draw.text((6, 4), f"dreamkit ablate: {title} (mean +- std over seeds)", fill="black")
    for i, (m, means, stds) in enumerate(series):
        x0, y0 = (i % cols) * panel_w, 24 + (i // cols) * panel_h
        finite = [abs(v) + s for v, s in zip(means, stds) if math.isfinite(v)]
        top = max(finite) if finite and max(finite) > 0 else 1.0
        draw.text((x0 + label_w, y0 + 4), f"{m} (max {top:.3g})", fill="black")
        for j, (label, v, s) in enumerate(zip(labels, means, stds)):
            y = y0 + pad + j * row_h
            draw.text((x0 + 4, y), label[: (label_w - 10) // 6], fill="black")
            if not math.isfinite(v):
                continue
            w = int(bar_w * abs(v) / top)
            draw.rectangle([x0 + label_w, y + 2, x0 + label_w + w, y + row_h - 3], fill=(76, 114, 176))
            e0, e1 = int(bar_w * max(abs(v) - s, 0) / top), int(bar_w * (abs(v) + s) / top)
            draw.line([x0 + label_w + e0, y + row_h // 2, x0 + label_w + e1, y + row_h // 2], fill="black")
            draw.text((x0 + label_w + bar_w + 4, y), f"{v:.3g}", fill="black")
    image.save(path)
    return path


def _image_grid(grid: Grid, results: dict, out_dir: Path, path: Path) -> Optional[Path]:
    """A row per group of axis values; a column per prompt × seed × particle (the oracle's targets first): each
    cell's image (2D) or first turntable frame (3D), upscaled to about 96 pixels, labelled."""
    import imageio.v2 as imageio
    from PIL import Image, ImageDraw

    scale = 1

    def load(rel: str) -> Optional[Image.Image]:
        p = out_dir / "cells" / rel
        if not p.is_file():
            return None
        im = Image.fromarray(imageio.imread(p)[..., :3])
        return im.resize((im.width * scale, im.height * scale), Image.NEAREST)

    groups = list(dict.fromkeys(tuple(c.axes.values()) for c in grid.cells))
    columns: list[tuple[str, int, int]] = []  # (prompt, seed, particle)
    targets: dict[str, list[str]] = {}
    for cell in grid.cells:
        res = results.get(cell.id)
        if res is None:
            continue
        for r in res.get("rows", []):
            key = (cell.prompt, cell.seed, int(r.get("particle", 0)))
            if key not in columns:
                columns.append(key)
        if res.get("targets") and cell.prompt not in targets:
            targets[cell.prompt] = list(res["targets"])
    if not columns:
        return None
    columns.sort(key=lambda c: (grid.prompts.index(c[0]) if c[0] in grid.prompts else 0, c[1], c[2]))
    tile = None
    for cell in grid.cells:
        res = results.get(cell.id)
        for r in (res or {}).get("rows", []):
            if r.get("image"):
                tile = load(r["image"])
                break
        if tile is not None:
            break
    if tile is None:
        return None
    scale = max(1, 96 // max(tile.size))
    tw, th = tile.width * scale, tile.height * scale
    label_w = 8 * max(len(" ".join(g)) for g in groups) + 12 if groups else 40
    target_cols = [(p, t) for p in grid.prompts for t in targets.get(p, [])]
    ncols = len(target_cols) + len(columns)
    head = 30
    canvas = Image.new("RGB", (label_w + ncols * (tw + 2), head + len(groups) * (th + 2)), "white")
    draw = ImageDraw.Draw(canvas)
    for j, (prompt, rel) in enumerate(target_cols):
        im = load(rel)
        x = label_w + j * (tw + 2)
        draw.text((x + 2, 2), "target", fill="black")
        draw.text((x + 2, 14), prompt[: tw // 6], fill="black")
        if im is not None:
            for i in range(len(groups)):
                canvas.paste(im, (x, head + i * (th + 2)))
    for j, (prompt, seed, particle) in enumerate(columns):
        x = label_w + (len(target_cols) + j) * (tw + 2)
        draw.text((x + 2, 2), f"s{seed}" + (f" p{particle}" if particle else ""), fill="black")
        draw.text((x + 2, 14), prompt[: tw // 6], fill="black")
    by_key = {}
    for cell in grid.cells:
        res = results.get(cell.id)
        for r in (res or {}).get("rows", []):
            by_key[(tuple(cell.axes.values()), cell.prompt, cell.seed, int(r.get("particle", 0)))] = r.get("image")
    for i, g in enumerate(groups):
        y = head + i * (th + 2)
        draw.text((4, y + th // 2 - 6), " ".join(g) or "all", fill="black")
        for j, (prompt, seed, particle) in enumerate(columns):
            rel = by_key.get((g, prompt, seed, particle))
            im = load(rel) if rel else None
            if im is not None:
                canvas.paste(im, (label_w + (len(target_cols) + j) * (tw + 2), y))
    canvas.save(path)
    return path
