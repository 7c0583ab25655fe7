"""Run folders and the verbs behind the CLI: fit, export, render."""
from __future__ import annotations

import datetime as _dt
import logging
import os
import re
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Optional

import torch
from omegaconf import DictConfig, OmegaConf

from .errors import DreamkitError, Interrupted

CONFIG_NAME = "config.yaml"


def slugify(text: str, max_len: int = 48) -> str:
    slug = re.sub(r"[^a-zA-Z0-9]+", "_", text.strip().lower()).strip("_")
    return (slug[:max_len].rstrip("_")) or "prompt"


#: the link in ``outputs/<name>/`` to the newest run of that recipe (``dreamkit export outputs/gs_sds/latest``)
LATEST_LINK = "latest"


def make_run_dir(cfg: DictConfig) -> Path:
    """``outputs/<name>/<prompt-slug>@<timestamp>/``; never reuses an existing folder. ``outputs/<name>/latest``
    then points to it (see :func:`_point_latest`)."""
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    base = Path(cfg.output_dir) / slugify(str(cfg.name)) / f"{slugify(str(cfg.prompt))}@{stamp}"
    candidate, i = base, 1
    while True:
        try:
            candidate.mkdir(parents=True, exist_ok=False)
            break
        except FileExistsError:
            candidate = base.with_name(f"{base.name}-{i}")
            i += 1
    _point_latest(candidate)
    return candidate


def _point_latest(run_dir: Path) -> None:
    """Make ``run_dir.parent / latest`` a relative symlink to ``run_dir``, replaced atomically (a new link under a
    unique name, then renamed over the old one), so concurrent fits never leave it missing or half-written. Where the
    file system has no symlinks, say so once on stderr; the run itself does not depend on the link."""
    link = run_dir.parent / LATEST_LINK
    if link.exists() and not link.is_symlink():
        warnings.warn(f"{link} exists and is not a link: not pointing it at the new run {run_dir.name}", stacklevel=2)
        return
    tmp = run_dir.parent / f".{LATEST_LINK}.{os.getpid()}.{run_dir.name}"
    try:
        tmp.symlink_to(run_dir.name, target_is_directory=True)
        os.replace(tmp, link)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        warnings.warn(f"could not point {link} at {run_dir.name} ({err}); use the run's own folder", stacklevel=2)


def run_folders(output_dir: str | Path) -> list[Path]:
    """Every run folder ``<output_dir>/<name>/<run>`` (sorted by path), without the ``latest`` links."""
    return sorted(p for p in Path(output_dir).glob("*/*") if p.is_dir() and not p.is_symlink())


def _runs_in(folder: Path, k: int = 3) -> list[str]:
    """The names of the ``k`` newest run folders in ``folder`` (those with a config.yaml), newest first."""
    if not folder.is_dir():
        return []
    runs = [p for p in folder.iterdir() if p.is_dir() and not p.is_symlink() and (p / CONFIG_NAME).is_file()]
    return [p.name for p in sorted(runs, key=lambda p: p.stat().st_mtime, reverse=True)[:k]]


def load_run(run_dir: str | Path) -> tuple[Path, DictConfig, Path]:
    """(run_dir, its resolved config, its last checkpoint); clear errors for anything missing."""
    run_dir = Path(run_dir).expanduser()
    if run_dir.is_symlink() and run_dir.is_dir():   # outputs/<name>/latest: name the run itself from here on
        run_dir = run_dir.resolve()
    if not run_dir.is_dir():
        near = _runs_in(run_dir.parent)
        hint = (f"; in {run_dir.parent}: {', '.join(near)}" + (f" ({LATEST_LINK} = the newest)"
                if (run_dir.parent / LATEST_LINK).is_symlink() else "")) if near else ""
        raise DreamkitError(f"run folder not found: {run_dir} — pass a folder made by `dreamkit fit` "
                            f"(outputs/<name>/<prompt>@<time>, or outputs/<name>/{LATEST_LINK}){hint}")
    cfg_path = run_dir / CONFIG_NAME
    if not cfg_path.is_file():
        raise DreamkitError(f"{run_dir} has no {CONFIG_NAME}: it is not a dreamkit run folder")
    ckpt = run_dir / "ckpts" / "last.ckpt"
    from .config import load_yaml

    return run_dir, load_yaml(cfg_path), ckpt  # a shared run folder is untrusted: no interpolations resolved


def _quiet_lightning() -> None:
    for name in ("pytorch_lightning", "lightning", "lightning.pytorch", "lightning_fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*`training_step` returned.*")
    warnings.filterwarnings("ignore", message=".*has `shuffle=True`.*")
    warnings.filterwarnings("ignore", message=".*TensorBoard.*")
    warnings.filterwarnings("ignore", message=".*LightningModule.log.*")
    warnings.filterwarnings("ignore", message=".*isinstance\\(treespec, LeafSpec\\)` is deprecated.*")
    # our batches carry nothing (the system draws cameras from its own checkpointed generators), so resuming
    # mid-"epoch" with a non-resumable dataloader is exact
    warnings.filterwarnings("ignore", message=".*resuming from a checkpoint that ended before the epoch ended.*")
    warnings.filterwarnings("ignore", message=".*smaller than the logging interval.*")


def _fit_progress_bar():
    """Lightning's rich bar (steps, elapsed • remaining, steps/s, loss), labelled by step rather than epoch."""
    from pytorch_lightning.callbacks import RichProgressBar

    class FitProgressBar(RichProgressBar):
        def _get_train_description(self, current_epoch: int) -> str:
            return "fit"

    return FitProgressBar(leave=True)


class _Steps(torch.utils.data.Dataset):
    """A dataset of step indices; the system draws its own cameras, so batches carry nothing."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        return i


#: the environment variable through which rank zero of a fit in several processes names its run folder to the ranks
#: that Lightning's launcher starts (they run the same command again, and must not make folders of their own)
RUN_DIR_ENV = "DREAMKIT_RUN_DIR"


def _check_launch(cfg: DictConfig) -> None:
    """A fit in several processes (``trainer.devices`` × ``trainer.num_nodes`` > 1) whose other ranks Lightning's
    launcher starts by running this process's command again: that command must be ``dreamkit fit`` (from Python or a
    test runner it would run the caller again). Processes that a cluster started (torchrun, SLURM) are fine."""
    from .distributed import world_size_of

    if world_size_of(cfg) == 1 or "LOCAL_RANK" in os.environ or "SLURM_PROCID" in os.environ:
        return
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    if Path(sys.argv[0]).name == "dreamkit" or (spec is not None and spec.name.split(".")[0] == "dreamkit"):
        return
    raise DreamkitError(f"trainer.devices={cfg.trainer.devices} (× trainer.num_nodes={cfg.trainer.num_nodes}): the "
                        "other processes of the fit are started by running the same command again, so run it as "
                        "`dreamkit fit ...` (not from Python, a notebook or a batch worker), or set trainer.devices=1")


def fit(cfg: DictConfig, resume_dir: Optional[Path] = None, export: bool = True, prior: Any = None) -> Path:
    """Train; returns the run folder. ``resume_dir`` continues that run from ``ckpts/last.ckpt``. ``prior``: an
    already built prior for ``cfg.prior`` on ``cfg.device`` (a worker that runs many fits loads it once; frozen priors
    hold no state a fit changes), instead of building one.

    With ``trainer.devices`` × ``trainer.num_nodes`` > 1 the fit runs in that many processes (Lightning's DDP,
    dreamkit.distributed): rank zero makes the run folder and writes checkpoints, renders and exports; the others
    return the run folder when training ends."""
    import pytorch_lightning as pl
    from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger

    from .callbacks import AtomicCheckpoint, GracefulStop, TextProgress, ValidationRenders
    from .distributed import die_with_parent, launched_by_lightning, make_ddp_strategy, rank_info, world_size_of
    from .priors.configs import build_prior
    from .components import configure_device
    from .system import DreamSystem, eval_cameras, resolve_device

    _quiet_lightning()
    _check_launch(cfg)
    world = world_size_of(cfg)
    rank = rank_info(cfg) if world > 1 else None
    lead = rank is None or rank.is_zero  # the process that writes
    if launched_by_lightning():  # a rank Lightning started: it must not outlive the command that started it
        die_with_parent()
    if cfg.get("viewer"):  # a missing optional extra fails before anything is loaded or written
        from .viewer.server import import_viser

        import_viser()
    start_step = 0
    if resume_dir is not None:
        # the checkpoint is read and checked before anything touches the run folder (or loads a prior)
        start_step = _check_resume(Path(resume_dir), cfg)
    device = resolve_device(str(cfg.device))
    if rank is not None and device.type == "cuda":
        device = torch.device("cuda", rank.local_rank)  # one GPU per process of the node
    configure_device(cfg, device)
    # everything that can fail on bad input happens before the run folder exists
    pl.seed_everything(int(cfg.seed), verbose=False)
    if prior is None:
        prior = build_prior(cfg.prior, device)
    system = DreamSystem(cfg)
    system.attach_prior(prior)
    system.check_prompts()  # e.g. a prompt the prior cannot express
    if cfg.get("init_from") and resume_dir is None:  # a resumed run's checkpoint already holds the initialisation
        init_from_run(system.representation, cfg)
    ckpt_path = None
    if resume_dir is not None:
        run_dir = Path(resume_dir)
        ckpt_path = str(run_dir / "ckpts" / "last.ckpt")
    elif lead:
        check_memory_budget(cfg, device)
        run_dir = make_run_dir(cfg)
    else:  # rank zero's folder (a rank on another machine never writes to it)
        run_dir = Path(os.environ.get(RUN_DIR_ENV) or Path(str(cfg.output_dir)) / f"rank{rank.rank}-not-written")
    system.run_dir = run_dir
    if lead:
        # the config goes to disk first (atomically), so a failed start still documents itself
        tmp = run_dir / f".{CONFIG_NAME}.tmp"
        OmegaConf.save(cfg, tmp, resolve=True)
        os.replace(tmp, run_dir / CONFIG_NAME)
        print(f"run folder: {run_dir}" + (f" ({world} processes)" if world > 1 else ""), flush=True)

    max_steps = int(cfg.trainer.max_steps)
    eval_cams = eval_cameras(cfg)
    targets = None
    if hasattr(prior, "target_images"):
        with torch.no_grad():
            targets = prior.target_images(eval_cams.to(device), 0).permute(0, 2, 3, 1).cpu()
    checkpointer = AtomicCheckpoint(run_dir / "ckpts", int(cfg.trainer.checkpoint_every), max_steps)
    stopper = GracefulStop(checkpointer)
    callbacks: list[Any] = [
        checkpointer,
        ValidationRenders(run_dir / "renders", int(cfg.trainer.val_every), max_steps, eval_cams, targets),
        stopper,
    ]
    viewer = None
    if cfg.get("viewer"):  # before GracefulStop: a signal that ends a pause is handled at the same step
        from .viewer.live import LiveViewer

        viewer = LiveViewer(cfg, run_dir, max_steps, eval_cams[0:1], stop_requested=lambda: stopper.signum is not None)
        callbacks.insert(callbacks.index(stopper), viewer)
    use_rich = bool(cfg.trainer.progress) and sys.stdout.isatty() and lead
    if use_rich:
        callbacks.append(_fit_progress_bar())
    else:
        callbacks.append(TextProgress(max(1, max_steps // 20), max_steps))
    # a resumed run logs into logs/resume-N/ (Lightning's CSV logger would delete an existing metrics.csv)
    version = ""
    if resume_dir is not None:
        n = 1
        while (run_dir / "logs" / f"resume-{n}").exists():
            n += 1
        version = f"resume-{n}"
    # a composed recipe logs the members that did not run this step as NaN (absent, not carried over); tensorboardX
    # warns "NaN or Inf found in input tensor." for each, which reads as a failure — real divergence is caught by
    # DreamSystem.check_nonfinite
    logging.getLogger("tensorboardX.x2num").setLevel(logging.ERROR)
    loggers = [CSVLogger(str(run_dir), name="logs", version=version),
               TensorBoardLogger(str(run_dir), name="tb", version="", default_hp_metric=False)]
    placement: dict[str, Any] = {"accelerator": "gpu" if device.type == "cuda" else "cpu",
                                 "devices": [device.index or 0] if device.type == "cuda" else 1}
    if world > 1:  # Lightning starts the other ranks and the process group; dreamkit averages the gradients
        placement.update(devices=int(cfg.trainer.devices), num_nodes=int(cfg.trainer.num_nodes),
                         strategy=make_ddp_strategy(cfg, device), use_distributed_sampler=False)
    trainer = pl.Trainer(
        **placement,
        max_steps=max_steps,
        max_epochs=-1,
        logger=loggers,
        callbacks=callbacks,
        enable_checkpointing=False,
        enable_progress_bar=use_rich,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        log_every_n_steps=int(cfg.trainer.log_every),
        deterministic=False,
        benchmark=False,
    )
    loader = torch.utils.data.DataLoader(_Steps(max_steps), batch_size=1, shuffle=False, num_workers=0)
    if resume_dir is not None and lead:
        print(f"resuming from step {start_step} of {max_steps} ({ckpt_path})", flush=True)
    t0 = time.perf_counter()
    named = world > 1 and lead and RUN_DIR_ENV not in os.environ
    if named:  # the ranks Lightning starts inherit the environment: they learn the run folder from it
        os.environ[RUN_DIR_ENV] = str(run_dir)
    try:
        import inspect

        safe = {"weights_only": True} if "weights_only" in inspect.signature(trainer.fit).parameters else {}
        trainer.fit(system, train_dataloaders=loader, ckpt_path=ckpt_path, **safe)  # checked by _check_resume too
    finally:
        stopper.restore()
        if named:
            os.environ.pop(RUN_DIR_ENV, None)
        if viewer is not None:
            viewer.close()
    elapsed = time.perf_counter() - t0
    if not lead:  # rank zero reports, exports and writes the run page
        return run_dir
    trained = trainer.global_step - start_step
    if stopper.signum is not None and trainer.global_step < max_steps:
        import signal as _signal

        raise Interrupted(f"interrupted ({_signal.Signals(stopper.signum).name}) at step {trainer.global_step} of "
                          f"{max_steps}, checkpoint written — resume with dreamkit fit resume={run_dir}",
                          stopper.signum)
    if trainer.global_step < max_steps:
        raise DreamkitError(f"training stopped at step {trainer.global_step} of {max_steps}; resume with "
                            f"`dreamkit fit resume={run_dir}`")
    since = f" (steps {start_step}–{max_steps}, resumed)" if start_step else ""
    print(f"trained {trained} steps{since} in {elapsed:.1f}s", flush=True)
    if getattr(system, "val_psnr", None) is not None:
        print(f"held-out PSNR: {system.val_psnr:.2f} dB", flush=True)
    if export:
        export_run(run_dir, list(cfg.export.formats) + (["mp4"] if cfg.export.turntable else []),
                   system=system)
    return run_dir


def _check_resume(run_dir: Path, cfg: DictConfig) -> int:
    """Read and check a run's checkpoint before resuming it (nothing is written before this passes): the step it
    holds, which must be below ``trainer.max_steps``."""
    from .checkpoint import checkpoint_global_step

    ckpt = run_dir / "ckpts" / "last.ckpt"
    if not ckpt.is_file():
        raise DreamkitError(f"cannot resume {run_dir}: no checkpoint at {ckpt} (the run stopped before its "
                            "first checkpoint; start it again)")
    step = checkpoint_global_step(ckpt)
    max_steps = int(cfg.trainer.max_steps)
    if step >= max_steps:
        raise DreamkitError(f"{run_dir} is already finished (step {step} of {max_steps}) — to train it longer pass "
                            f"trainer.max_steps={max_steps + max(step, 100)} (or export it: dreamkit export {run_dir})")
    return step


def _available_memory(device: torch.device) -> Optional[int]:
    """Bytes free for a run on ``device`` (CUDA: free device memory; CPU: MemAvailable), None if unknown."""
    if device.type == "cuda":
        try:
            return int(torch.cuda.mem_get_info(device)[0])
        except Exception:
            return None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


#: a crude upper bound of a training step's memory per rendered pixel (render buffers, their gradients, the prior's
#: activations at the camera's resolution); 64² × 4 takes well under 1 GB, which this puts at 16 MB + the models
BYTES_PER_PIXEL = 1024


def check_memory_budget(cfg: DictConfig, device: torch.device) -> None:
    """Refuse, before the run folder exists, a camera batch that cannot fit in memory (one line, exit 2)."""
    particles = int(cfg.get("particles", 1) or 1)
    pixels = int(cfg.camera.width) * int(cfg.camera.height) * int(cfg.camera.batch_size) * particles
    need = pixels * BYTES_PER_PIXEL
    free = _available_memory(device)
    if free is not None and need > free:
        each = f" × {particles} particles" if particles > 1 else ""
        raise DreamkitError(f"camera {cfg.camera.width}×{cfg.camera.height} × batch {cfg.camera.batch_size}{each} needs "
                            f"about {need / 2**30:.0f} GiB for a step (estimate) and {free / 2**30:.1f} GiB are free "
                            f"on {device.type} — lower camera.width/height, camera.batch_size or particles")


def init_from_run(representation: Any, cfg: DictConfig) -> None:
    """``init_from=<run>``: initialise the representation from a finished run folder (before the new run's folder
    exists, so a bad source fails with one line and leaves nothing behind)."""
    from .errors import ConfigError

    if not hasattr(representation, "initialize_from_run"):
        raise ConfigError(f"init_from is set but representation.name={cfg.representation.name} cannot start from "
                          "another run — use representation.name=mesh or dmtet, or drop init_from")
    representation.initialize_from_run(Path(str(cfg.init_from)).expanduser())


def apply_export_overrides(cfg: DictConfig, overrides: list[str]) -> None:
    """``export.*`` overrides of ``dreamkit export`` / ``render`` applied to a run's config (checked like a fit's);
    any other key is refused with one line."""
    from .config import ExportConfig, merge_structured, parse_overrides

    if not overrides:
        return
    for item in overrides:
        key = item.split("=", 1)[0]
        if not key.startswith("export."):
            raise DreamkitError(f"{item!r}: dreamkit export/render take export.* overrides only (e.g. "
                                "export.mesh_threshold=0.2); to change the fit itself, run dreamkit fit again")
    parsed = parse_overrides(list(overrides))
    merged = merge_structured(ExportConfig, OmegaConf.to_container(cfg.export, resolve=True),
                              OmegaConf.to_container(parsed.export), prefix="export")
    cfg.export = merged


def check_formats(formats: list[str]) -> None:
    """Every format known, before anything is written."""
    from .registry import exporter

    for fmt in formats:
        exporter(fmt)


def export_run(run_dir: Path, formats: list[str], system: Any = None, out_dir: Optional[Path] = None,
               overrides: Optional[list[str]] = None) -> list[Path]:
    """Write exports of a run into ``<run>/exports`` (or ``out_dir``); existing files are kept (numbered names).
    ``overrides``: ``export.*`` settings for this export (``export.mesh_threshold=0.2``)."""
    from .imageio_utils import unique_path
    from .registry import exporter
    from .components import background_from_checkpoint, load_representation_from_checkpoint, resolve_device

    check_formats(formats)
    run_dir, cfg, ckpt = load_run(run_dir)
    apply_export_overrides(cfg, list(overrides or []))
    device = resolve_device(str(cfg.device))
    if system is not None:
        from .components import export_member

        model = export_member(system.representation, cfg).eval()
        background = system.background(1, training=False)[0].detach().cpu()
    else:
        if not ckpt.is_file():
            raise DreamkitError(f"{run_dir} has no checkpoint yet ({ckpt}); nothing to export")
        model = load_representation_from_checkpoint(cfg, ckpt, device)
        background = background_from_checkpoint(cfg, ckpt)
    supported = getattr(model, "export_formats", None)  # a representation only some exporters apply to (image)
    if supported is not None and any(f not in supported for f in formats):
        print(f"skipping {', '.join(f for f in formats if f not in supported)}: representation.name="
              f"{cfg.representation.name} exports {', '.join(supported)} only", flush=True)
        formats = [f for f in formats if f in supported]
    out_dir = Path(out_dir) if out_dir else run_dir / "exports"
    out_dir.mkdir(parents=True, exist_ok=True)
    names = {"ply": "gaussians.ply", "mp4": "turntable.mp4", "glb": "mesh.glb", "obj": "mesh.obj", "png": "image.png"}
    written = []
    for fmt in formats:
        fn = exporter(fmt)
        path = unique_path(out_dir / names.get(fmt, f"export.{fmt}"))
        written.append(fn(model, path, export_cfg=cfg.export, background=background, device=device))
        print(f"wrote {written[-1]}", flush=True)
    return written


def render_run(run_dir: Path, frames: Optional[int] = None, resolution: Optional[int] = None,
               output: Optional[Path] = None, overrides: Optional[list[str]] = None) -> Path:
    """Turntable MP4 (+ preview PNG) of a run's last checkpoint; an existing file is never overwritten."""
    from .imageio_utils import unique_path
    from .registry import exporter
    from .components import background_from_checkpoint, load_representation_from_checkpoint, resolve_device

    run_dir, cfg, ckpt = load_run(run_dir)
    apply_export_overrides(cfg, list(overrides or []))
    if not ckpt.is_file():
        raise DreamkitError(f"{run_dir} has no checkpoint yet ({ckpt}); nothing to render")
    if frames is not None:
        cfg.export.turntable_frames = frames
    if resolution is not None:
        cfg.export.turntable_resolution = resolution
    device = resolve_device(str(cfg.device))
    model = load_representation_from_checkpoint(cfg, ckpt, device)
    target = Path(output) if output else run_dir / "exports" / "turntable.mp4"
    path = exporter("mp4")(model, unique_path(target), export_cfg=cfg.export,
                           background=background_from_checkpoint(cfg, ckpt), device=device)
    print(f"wrote {path}", flush=True)
    return path


def checkpoint_step(run_dir: Path) -> int:
    """Steps completed by a run's last checkpoint; -1 when there is none (or it is being replaced right now)."""
    ckpt = Path(run_dir) / "ckpts" / "last.ckpt"
    if not ckpt.is_file():
        return -1
    from .checkpoint import CheckpointError, checkpoint_global_step

    try:
        return checkpoint_global_step(ckpt)
    except CheckpointError:
        return -1


@torch.no_grad()
def held_out_renders(run_dir: Path) -> tuple[DictConfig, Any, Any, torch.Tensor, torch.Tensor]:
    """(config, representation, held-out cameras, renders [B,H,W,3], oracle targets [B,H,W,3]) of an oracle run's
    last checkpoint, on the CPU; renders are over the run's solid background, clamped to [0, 1]."""
    from .priors.configs import build_prior
    from .components import eval_cameras, load_representation_from_checkpoint

    run_dir, cfg, ckpt = load_run(run_dir)
    if cfg.prior.type != "oracle":
        raise DreamkitError(f"{run_dir} was not fitted with the oracle prior: it has no ground-truth targets")
    model = load_representation_from_checkpoint(cfg, ckpt, torch.device("cpu"))
    cams = eval_cameras(cfg)
    background = torch.tensor(list(cfg.background.color), dtype=torch.float32).expand(len(cams), 3)
    images = model.render(cams, background=background).rgb.clamp(0, 1)
    targets = build_prior(cfg.prior, torch.device("cpu")).target_images(cams, 0).permute(0, 2, 3, 1)
    return cfg, model, cams, images, targets


def held_out_psnr(run_dir: Path) -> float:
    """PSNR (dB) of an oracle run's last checkpoint at the held-out cameras against the oracle's target renders."""
    from .callbacks import psnr_db

    _, _, _, images, targets = held_out_renders(run_dir)
    return psnr_db(images, targets)
