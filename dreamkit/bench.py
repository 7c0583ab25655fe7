"""``dreamkit bench``: how fast is each recipe's real training step, where does its time go, and how close is it to
the prior's own cost?

For each recipe the system is built as ``dreamkit fit`` builds it (representation, prior, guidance, background,
optimizer), then :meth:`~dreamkit.system.DreamSystem.optimization_step` — the very step Lightning's
``training_step`` runs — is called directly, without the Trainer: ``warmup`` untimed steps, then ``steps`` timed.

Reported per recipe:

* ``step_s`` / ``steps_per_s``: mean wall time of one step. On CUDA the timed steps run back to back with one
  synchronisation at each end (throughput); on the CPU work is synchronous and the same steps give the split.
* ``split``: exclusive seconds per section of one step (:mod:`dreamkit.timing`): ``render``, ``encode`` (the prior's
  encoder forward, the VAE for latent priors), ``prior`` (the noise prediction(s) inside guidance, CFG included),
  ``guidance`` (the rest of the guidance loss), ``regularizers``, ``backward`` (of the total loss, through the
  renderer and the encoder), ``optimizer`` (clipping and the optimizer step), ``post_step`` (densification
  bookkeeping) and ``other`` (= step − the sum: camera sampling, learning rates, loss sum). On CUDA the split comes
  from separate steps whose section boundaries synchronise the device; ``split_step_s`` is their mean step time, so
  the split adds up to ``split_step_s``, and ``step_s`` stays free of that overhead.
* ``limit_s``: the prior's work for the same batch timed alone — its noise prediction(s) with classifier-free
  guidance (two branches when the recipe's guidance scale is not 1) at the batch size and resolution of the step,
  plus, for latent priors, the encoder forward and backward. For oracle recipes the "prior" is the exact oracle
  denoiser (target renders included). ``ratio = step_s / limit_s``: 1 would mean everything but the prior is free.
* ``peak_mem_mb``: CPU — the process's peak resident set (``getrusage``; a maximum over the whole process so far,
  so it never decreases from one recipe to the next); CUDA — ``torch.cuda.max_memory_allocated`` during the recipe.

``--prior sd21-random`` replaces each recipe's prior by the real Stable Diffusion 2.1-base architecture with random
weights (:func:`dreamkit.priors.tiny_random.build_sd21_random`, built once into a cache folder) at 512×512, batch 4,
as DreamGaussian-like SDS runs.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import gc
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch

from .errors import ConfigError, DreamkitError

SPLIT_KEYS = ("render", "encode", "prior", "guidance", "regularizers", "backward", "optimizer", "post_step", "other")
PRIOR_KINDS = ("tiny", "sd21-random")
#: recipes benchmarked with --prior sd21-random when none is named
SD21_DEFAULT_RECIPES = ("gs_sds32",)  # the plain SDS recipe (the measured H200 rows: docs/benchmarks.md)
SD21_CAMERA = {"width": 512, "height": 512, "batch_size": 4}


@dataclasses.dataclass
class BenchOptions:
    recipes: list[str] = dataclasses.field(default_factory=list)  # empty: the default set for ``prior``
    device: str = "auto"
    prior: str = "tiny"
    steps: Optional[int] = None
    warmup: Optional[int] = None
    overrides: list[str] = dataclasses.field(default_factory=list)
    json_path: Optional[Path] = None
    sd21_dir: Optional[Path] = None
    #: at most this many extra steps give the split on CUDA
    split_steps: int = 20


def default_sd21_dir() -> Path:
    env = os.environ.get("DREAMKIT_SD21_RANDOM_DIR")
    if env:
        return Path(env).expanduser()
    cache = Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser()
    return cache / "dreamkit" / "sd21-random"


def default_counts(device: torch.device, prior: str) -> tuple[int, int]:
    """(warmup, steps) when not given: enough on a GPU for stable means; little on a CPU."""
    if prior == "sd21-random":
        return (3, 10) if device.type == "cuda" else (0, 1)
    return (10, 50) if device.type == "cuda" else (2, 10)


def recipe_names(opts: BenchOptions) -> list[str]:
    from .config import resolve_config_path, shipped_configs

    if opts.recipes:
        for name in opts.recipes:
            resolve_config_path(name)  # unknown names fail here, before any work
        return list(opts.recipes)
    if opts.prior == "sd21-random":
        return list(SD21_DEFAULT_RECIPES)
    return [p.stem for p in shipped_configs()]


def recipe_config(name: str, opts: BenchOptions, device: torch.device):
    """The recipe as ``dreamkit fit`` would run it (+ ``opts.overrides``); with ``--prior sd21-random`` its prior
    section is replaced by the random SD 2.1 folder and its cameras by 512², batch 4. Never reaches the network."""
    from omegaconf import OmegaConf

    from .config import load_config, load_recipe

    raw = load_recipe(name)
    if opts.prior == "sd21-random":
        folder = opts.sd21_dir or default_sd21_dir()
        raw.prior = OmegaConf.create({"type": "stable-diffusion", "name": str(folder), "local_files_only": True})
        camera = OmegaConf.to_container(raw.get("camera") or OmegaConf.create({}))
        camera.update(SD21_CAMERA)
        raw.camera = camera
    cfg = load_config(None, [f"device={device}"] + list(opts.overrides), base=raw)
    if cfg.prior.type == "stable-diffusion" and cfg.prior.local_files_only is None:
        cfg.prior.local_files_only = True  # a hub id must already be in the local cache: no downloads in a bench
    return cfg


def _sync_fn(device: torch.device) -> Optional[Callable[[], None]]:
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return None


def _now(sync: Optional[Callable[[], None]]) -> float:
    if sync is not None:
        sync()
    return time.perf_counter()


def build_system(cfg: Any, device: torch.device, prior: Any = None):
    """(system, optimizer) ready to step, set up as ``dreamkit fit`` sets them up (without the Trainer); ``prior``:
    an already built prior of ``cfg.prior`` on ``device`` (e.g. one cached across ablation cells), else built here."""
    import pytorch_lightning as pl

    from .components import configure_device
    from .priors.configs import build_prior, check_prior_config
    from .system import DreamSystem

    if prior is None:
        check_prior_config(cfg.prior)
    configure_device(cfg, device)
    pl.seed_everything(int(cfg.seed), verbose=False)
    if prior is None:
        prior = build_prior(cfg.prior, device)
    system = DreamSystem(cfg)
    system.attach_prior(prior)
    system.to(device)
    system.setup("fit")
    system.train()
    optimizer = system.configure_optimizers()
    return system, optimizer


def _peak_memory_mb(device: torch.device) -> tuple[float, str]:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "cuda_max_allocated"
    try:
        import resource
    except ImportError:  # Windows: no getrusage; the current resident set is the best available
        try:
            import psutil

            return psutil.Process().memory_info().rss / 2**20, "process_rss"
        except ImportError:
            return float("nan"), "unavailable"
    # ru_maxrss: kilobytes on Linux, bytes on macOS
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (2**20 if sys.platform == "darwin" else 2**10), "process_max_rss"


def measure_steps(system: Any, optimizer: Any, device: torch.device, warmup: int, steps: int,
                  split_steps: int = 20) -> dict:
    """Run ``warmup`` + ``steps`` optimisation steps (and, on CUDA, up to ``split_steps`` instrumented ones);
    returns step_s, steps_per_s, split (seconds per section of one step) and split_step_s."""
    from .timing import StepTimer

    sync = _sync_fn(device)
    step = 0
    for _ in range(warmup):
        system.optimization_step(step, optimizer)
        step += 1
    timer = StepTimer(sync=sync)

    def timed(n: int, with_timer: bool) -> float:
        """Run n steps (optionally under the section timer) → mean seconds per step."""
        nonlocal step
        if with_timer:
            system.set_timer(timer)
        try:
            start = _now(sync)
            for _ in range(n):
                system.optimization_step(step, optimizer)
                step += 1
            return (_now(sync) - start) / n
        finally:
            system.set_timer(None)

    if sync is None:  # CPU: synchronous, the timer costs microseconds — one pass gives both
        step_s = timed(steps, with_timer=True)
        split_n, split_step_s = steps, step_s
    else:  # CUDA: the timer synchronises at every section, so the step time comes from an untimed pass
        step_s = timed(steps, with_timer=False)
        split_n = max(1, min(steps, split_steps))
        split_step_s = timed(split_n, with_timer=True)
    split = {k: timer.totals.get(k, 0.0) / split_n for k in SPLIT_KEYS if k != "other"}
    for k, v in timer.totals.items():  # sections a component added beyond the known ones
        if k not in split:
            split[k] = v / split_n
    split["other"] = max(split_step_s - sum(split.values()), 0.0)
    return {"step_s": step_s, "steps_per_s": 1.0 / step_s if step_s > 0 else math.inf, "split": split,
            "split_step_s": split_step_s, "split_steps": split_n, "last_step": step}


def measure_limit(system: Any, device: torch.device, warmup: int, steps: int) -> dict:
    """Seconds of the prior's work for one step's batch, alone: noise prediction(s) (CFG as the recipe's guidance
    scale asks) on inputs at the prior's resolution, plus the encoder forward and backward for latent priors."""
    from .cameras import Cameras
    from .schedule import value_at
    from .system import host_to_device

    prior = system.prior
    cfg = system.cfg
    sync = _sync_fn(device)
    batch, width, height = int(cfg.camera.batch_size), int(cfg.camera.width), int(cfg.camera.height)
    guidance_cfg = getattr(system.guidance, "cfg", None)
    scale = 1.0
    if guidance_cfg is not None and "guidance_scale" in guidance_cfg:
        scale = float(value_at(guidance_cfg.guidance_scale, 0, "guidance.guidance_scale"))
    latent = bool(getattr(prior, "latent", False))
    gen = torch.Generator(device=device).manual_seed(1234)
    n_train = int(prior.alphas_cumprod.shape[0])
    times = []
    for i in range(warmup + steps):
        host = system.sampler.sample_cameras(0)
        moved = host_to_device([host.c2w, host.K, host.elevation, host.azimuth, host.distance, host.fovy, host.time],
                               device)
        cameras = Cameras(moved[0], moved[1], host.width, host.height, *moved[2:])
        text = system.prompts.select(None, batch)
        images = torch.rand(batch, 3, height, width, generator=gen, device=device)
        t = torch.randint(int(0.02 * n_train), int(0.98 * n_train), (batch,), generator=gen, device=device)
        if not latent:
            with torch.no_grad():
                x_fixed = prior.encode(images)
            noise = torch.randn(x_fixed.shape, generator=gen, device=device, dtype=x_fixed.dtype)
        start = _now(sync)
        if latent:
            images.requires_grad_(True)
            x = prior.encode(images)
            noise = torch.randn(x.shape, generator=gen, device=device, dtype=x.dtype)
        else:
            x = x_fixed
        with torch.no_grad():
            abar = prior.alphas_cumprod.to(device)[t].view(-1, *([1] * (x.dim() - 1)))
            x_t = abar.sqrt() * x.detach() + (1 - abar).sqrt() * noise
            if scale == 1.0:
                eps = prior.predict(x_t, t, text.cond, cameras)
            else:
                eps = prior.predict_cfg(x_t, t, text, scale, cameras)
        if latent:
            grad = ((1 - abar) * (eps.to(x.dtype) - noise)).detach()
            (x * grad).sum().backward()
        elapsed = _now(sync) - start
        if i >= warmup:
            times.append(elapsed)
    return {"limit_s": sum(times) / len(times), "limit_cfg": scale != 1.0, "limit_latent": latent}


def _describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform

    return f"{platform.processor() or platform.machine()} ({os.cpu_count()} cores, {torch.get_num_threads()} threads)"


def bench_recipe(name: str, opts: BenchOptions, device: torch.device, warmup: int, steps: int) -> dict:
    cfg = recipe_config(name, opts, device)
    if opts.prior == "sd21-random":
        from .priors.tiny_random import ensure_sd21_random

        folder = Path(cfg.prior.name)
        print(f"bench: preparing the random SD 2.1-base folder {folder} (built once)", file=sys.stderr, flush=True)
        ensure_sd21_random(folder)
    if device.type == "cuda":
        torch.cuda.empty_cache()
    t0 = time.perf_counter()
    system, optimizer = build_system(cfg, device)
    build_s = time.perf_counter() - t0
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    result = {"recipe": name, "device": str(device.type), "device_name": _describe_device(device),
              "prior": opts.prior, "prior_type": str(cfg.prior.type), "prior_name": str(cfg.prior.get("name", "")),
              "representation": str(cfg.representation.name),
              "batch": int(cfg.camera.batch_size), "width": int(cfg.camera.width), "height": int(cfg.camera.height),
              "warmup": warmup, "steps": steps, "build_s": build_s}
    timing = measure_steps(system, optimizer, device, warmup, steps, opts.split_steps)
    peak, kind = _peak_memory_mb(device)
    limit = measure_limit(system, device, min(warmup, 2), max(1, min(steps, 20)))
    result.update(timing)
    result.update(limit)
    result["ratio"] = timing["step_s"] / limit["limit_s"] if limit["limit_s"] > 0 else math.inf
    result["peak_mem_mb"] = peak
    result["peak_mem_kind"] = kind
    if hasattr(system.representation, "num_gaussians"):
        result["num_gaussians"] = int(system.representation.num_gaussians)
    del system, optimizer
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return result


def run_bench(opts: BenchOptions, stream=None) -> tuple[list[dict], int]:
    """Benchmark every recipe; returns (results, exit code). A recipe that fails is reported (``error``) and the
    others still run; the exit code is 1 when a recipe named with ``--recipe`` or any recipe failing with an
    unexpected error did not run, 0 otherwise (a default recipe whose prior is not installed is only skipped)."""
    from .system import resolve_device

    stream = stream or sys.stdout
    if opts.prior not in PRIOR_KINDS:
        raise ConfigError(f"--prior {opts.prior!r} — use one of {', '.join(PRIOR_KINDS)}")
    device = resolve_device(opts.device)
    warmup, steps = default_counts(device, opts.prior)
    warmup = warmup if opts.warmup is None else int(opts.warmup)
    steps = steps if opts.steps is None else int(opts.steps)
    if steps < 1 or warmup < 0:
        raise ConfigError(f"--steps must be ≥ 1 and --warmup ≥ 0, got {steps} and {warmup}")
    names = recipe_names(opts)
    if opts.prior == "sd21-random" and device.type != "cuda":
        print(f"warning: --prior sd21-random on the CPU is very slow (minutes per step, 10 GB of memory or more); "
              f"running {warmup} warm-up and {steps} timed step(s)", file=sys.stderr, flush=True)
    results, code = [], 0
    stamp = _dt.datetime.now().isoformat(timespec="seconds")
    for name in names:
        print(f"bench: {name} on {device} ({opts.prior} prior, {warmup} warm-up + {steps} timed steps)",
              file=sys.stderr, flush=True)
        if results and opts.json_path is not None:
            _write_json(results, opts.json_path, stamp)  # what is done so far survives a kill
        try:
            results.append(bench_recipe(name, opts, device, warmup, steps))
        except DreamkitError as err:
            results.append({"recipe": name, "device": device.type, "prior": opts.prior, "error": str(err)})
            print(f"bench: {name} skipped — {err}", file=sys.stderr, flush=True)
            if opts.recipes:
                code = 1
        except Exception as err:  # noqa: BLE001 - one broken recipe must not hide the others' numbers
            import traceback

            traceback.print_exc()
            results.append({"recipe": name, "device": device.type, "prior": opts.prior,
                            "error": f"{type(err).__name__}: {err}"})
            print(f"bench: {name} failed — {type(err).__name__}: {err}", file=sys.stderr, flush=True)
            code = 1
    print_table(results, stream)
    if opts.json_path is not None:
        path = _write_json(results, opts.json_path, stamp)
        print(f"wrote {path}", file=stream, flush=True)
    return results, code


def _write_json(results: list[dict], path: Path, stamp: str) -> Path:
    for r in results:
        r.setdefault("torch", torch.__version__)
        r.setdefault("time", stamp)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(results, indent=2, default=str) + "\n")
    os.replace(tmp, path)
    return path


# ----------------------------------------------------------------------------------------------------------------
# output


def _ms(seconds: Optional[float]) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "-"
    ms = seconds * 1e3
    return f"{ms:.2f}" if ms < 10 else f"{ms:.1f}" if ms < 1000 else f"{ms:.0f}"


def table_rows(results: Sequence[dict]) -> tuple[list[str], list[list[str]]]:
    keys = [k for k in SPLIT_KEYS if any(r.get("split", {}).get(k) for r in results)]
    extra = sorted({k for r in results for k in r.get("split", {}) if k not in SPLIT_KEYS})
    header = ["recipe", "device", "steps/s", "step ms", "limit ms", "ratio", "peak MB"] + \
        [f"{k} ms" for k in keys + extra]
    rows = []
    for r in results:
        if "error" in r:
            rows.append([r["recipe"], r.get("device", ""), "—", "—", "—", "—", "—"] + ["" for _ in keys + extra])
            continue
        split = r.get("split", {})
        rows.append([r["recipe"], r["device"], f"{r['steps_per_s']:.2f}", _ms(r["step_s"]), _ms(r["limit_s"]),
                     f"{r['ratio']:.2f}", f"{r['peak_mem_mb']:.0f}"] + [_ms(split.get(k)) for k in keys + extra])
    return header, rows


def format_plain(results: Sequence[dict]) -> str:
    header, rows = table_rows(results)
    widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in rows]
    for r in results:
        if "error" in r:
            lines.append(f"{r['recipe']}: {r['error']}")
    return "\n".join(lines)


def print_table(results: Sequence[dict], stream=None) -> None:
    stream = stream or sys.stdout
    notes = []
    if any(r.get("device") == "cuda" for r in results if "error" not in r):
        notes.append("split: separate steps with a device synchronisation at each section (see split_step_s)")
    if any(r.get("peak_mem_kind") == "process_max_rss" for r in results):
        notes.append("peak MB on the CPU: the process's peak resident set so far")
    if getattr(stream, "isatty", lambda: False)():
        try:
            from rich.console import Console
            from rich.table import Table
        except ImportError:  # pragma: no cover - rich is a dependency
            pass
        else:
            header, rows = table_rows(results)
            table = Table(title="dreamkit bench (ms per step; limit = the prior alone)")
            for i, h in enumerate(header):
                table.add_column(h, justify="left" if i < 2 else "right")
            for row in rows:
                table.add_row(*row)
            console = Console(file=stream)
            console.print(table)
            for r in results:
                if "error" in r:
                    console.print(f"{r['recipe']}: {r['error']}", markup=False)
            for note in notes:
                console.print(note, markup=False)
            return
    print(format_plain(results), file=stream)
    for note in notes:
        print(note, file=stream)
    stream.flush()
