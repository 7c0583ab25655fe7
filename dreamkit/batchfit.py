"""``dreamkit batch``: many prompts, each a fit, run by the engine (:mod:`dreamkit.engine`: Ray workers that keep their
prior, on this machine or a cluster), resumable.

The batch folder (``--out``)::

    manifest.json        each prompt's state (pending | running | done | failed), attempts, failures, run folder,
                         wall time, final loss, world scores; JSON written atomically by the driver, never code
    .batch.lock          held (flock) by the one driver working on the folder, with its PID
    runs/<NNN-slug>/     the prompt's fit: <name>/<prompt>@<time>/ (its run folder), fit.log, turntable_strip.png
    abandoned/<NNN-slug>/  run folders of attempts killed before their first checkpoint (kept, not reused)
    results.csv, results.md, contact_sheet.png   written as prompts finish and at the end

Running the same command again skips finished prompts, resumes interrupted ones from their checkpoints (a fit
checkpoints atomically every ``trainer.checkpoint_every`` steps), and retries failed ones while they have failed at
most ``--max-retries`` times. One driver per folder (the lock); one worker per prompt (a lock per prompt's folder,
taken by the worker for the whole fit), so a prompt never runs twice at once — not even when a worker of a killed
driver on another machine is still finishing. A "running" entry left by a driver that died is resumable: the lock
proves that driver is gone (a local Ray instance dies with its driver, and its workers with it).
"""
from __future__ import annotations

import contextlib
import csv
import datetime as _dt
import hashlib
import json
import math
import os
import sys
from collections import deque
from pathlib import Path
from typing import Any, Optional, Sequence

from .errors import DreamkitError, Interrupted

__all__ = ["run_batch", "resolve_prompt_list", "fit_prompt", "MANIFEST", "LOCK"]

MANIFEST = "manifest.json"
LOCK = ".batch.lock"
FORMAT = "dreamkit-batch/1"
STRIP = "turntable_strip.png"


class BatchIncomplete(DreamkitError):
    """Some prompts failed more often than ``--max-retries`` allows; exit code 1."""

    exit_code = 1


# ---------------------------------------------------------------------------------------------------------- prompts
def resolve_prompt_list(spec: Sequence[str]) -> tuple[list[str], str]:
    """(prompts, a short name for them). Each item of ``spec`` is a prompt-set name (``dreamkit eval``'s:
    singles20, singles4, asymmetric, compositions8), a text file with one prompt a line (blank lines and lines
    starting with # skipped), or a prompt itself."""
    from .eval.benchmark import PROMPT_SETS
    from .run import slugify

    prompts: list[str] = []
    names: list[str] = []
    for item in spec:
        path = Path(os.path.expanduser(item))
        if item in PROMPT_SETS:
            prompts += PROMPT_SETS[item]
            names.append(item)
        elif path.is_file():
            try:
                lines = path.read_text(encoding="utf-8").splitlines()
            except (OSError, UnicodeDecodeError) as err:
                raise DreamkitError(f"--prompts {item}: cannot read it as text ({err}) — give a UTF-8 file with one "
                                    "prompt a line") from None
            found = [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]
            if not found:
                raise DreamkitError(f"--prompts {item}: the file holds no prompt (one a line; # starts a comment)")
            prompts += found
            names.append(path.stem)
        elif path.suffix.lower() in (".txt", ".csv", ".lst") or "/" in item:
            raise DreamkitError(f"--prompts {item}: no such file — give a file with one prompt a line, a prompt set "
                                f"({', '.join(PROMPT_SETS)}) or prompts in quotes")
        else:
            prompts.append(item.strip())
            names.append("prompts")
    if not prompts or not all(prompts):
        raise DreamkitError('dreamkit batch needs prompts: --prompts singles20, --prompts prompts.txt or '
                            '--prompts "a red cube" "a blue torus"')
    seen: dict[str, int] = {}
    for i, prompt in enumerate(prompts):
        if prompt in seen:
            raise DreamkitError(f"--prompts: {prompt!r} comes twice (items {seen[prompt] + 1} and {i + 1}) — a batch "
                                "fits each prompt once; vary it with overrides (seed=...) in another batch")
        seen[prompt] = i
    label = slugify("+".join(dict.fromkeys(names)), max_len=40)
    return prompts, label


def prompt_id(index: int, prompt: str) -> str:
    from .run import slugify

    return f"{index:03d}-{slugify(prompt, max_len=40)}"


# ------------------------------------------------------------------------------------------------------ the folder
@contextlib.contextmanager
def driver_lock(out: Path):
    """Hold ``<out>/.batch.lock`` (an exclusive flock, released by the OS whatever way this process ends) with this
    process's PID in it; another driver on the same folder is refused with one line naming the holder."""
    with _flock(out / LOCK, f"{os.getpid()}\n", lambda holder: DreamkitError(
            f"another dreamkit batch (pid {holder}) is working on {out} — wait for it to end or stop it (Ctrl-C), or "
            "pass another --out")):
        yield


@contextlib.contextmanager
def prompt_lock(folder: Path):
    """Hold ``<folder>/.lock`` for one prompt's fit; :class:`~dreamkit.engine.Busy` if another process holds it."""
    from .engine import Busy

    folder.mkdir(parents=True, exist_ok=True)
    with _flock(folder / ".lock", f"{os.uname().nodename}:{os.getpid()}\n", lambda holder: Busy(
            f"{folder.name} is being fitted by another process ({holder}) — run the same command again when it has "
            "ended")):
        yield


@contextlib.contextmanager
def _flock(path: Path, owner: str, refused):
    """Hold an exclusive ``flock`` on ``path`` (its text: ``owner``) while the block runs; when another process
    holds it, raise ``refused(<its owner text>)``. The lock goes with the file descriptor (a killed holder frees it)."""
    import fcntl

    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
            raise refused(holder) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, owner.encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


def write_json_atomic(path: Path, data: Any) -> None:
    """Write ``data`` as JSON to a temporary file, fsync, rename over ``path``: a kill leaves the old or the new."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1, sort_keys=False, default=_plain)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _plain(value: Any) -> Any:
    """JSON for values that are not Python's own: numpy numbers and arrays, tensors, paths."""
    if hasattr(value, "tolist"):  # numpy scalars and arrays, tensors (a 0-d one becomes its number)
        return value.tolist()
    return str(value)


def read_manifest(path: Path) -> dict:
    """The manifest (plain JSON; nothing in it runs), checked for its format; one-line errors."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise DreamkitError(f"{path} cannot be read ({err}) — it is not a dreamkit batch manifest; pass another "
                            "--out") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("prompts"), list):
        raise DreamkitError(f"{path} is not a dreamkit batch manifest ({FORMAT}) — pass another --out")
    return data


def _identity(recipe: str, overrides: Sequence[str], prompts: Sequence[str]) -> tuple[str, dict]:
    """A hash of what the batch computes: every prompt's resolved config (without its output folder) and the
    prompts; the first prompt's config is returned for the checks."""
    from omegaconf import OmegaConf

    from .config import load_config

    configs, first = [], None
    for prompt in prompts:
        cfg = load_config(recipe, list(overrides) + [f"prompt={prompt!r}"])  # bad input fails here, before work
        first = first or cfg
        plain = OmegaConf.to_container(cfg, resolve=True)
        plain.pop("output_dir", None)
        configs.append(plain)
    digest = hashlib.sha256(json.dumps(configs, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return digest, first


# ------------------------------------------------------------------------------------------------ one prompt's fit
def _final_loss(run_dir: Path) -> Optional[float]:
    from .report.metrics import read_metrics

    series = read_metrics(run_dir).get("train/loss")
    return float(series[1][-1]) if series and series[1] else None


def fit_prompt(spec: dict) -> dict:
    """Fit one prompt of a batch (in a worker): resume its earlier attempt from its checkpoint if there is one, else
    start it; export as its recipe says; score it when the prompt is in the tiny world; write its turntable strip.
    ``spec``: plain values (out, id, prompt, recipe, overrides). Returns the row's plain values."""
    import torch

    from .components import resolve_device
    from .config import load_config
    from .eval.benchmark import _score_run, point_oracle_at_truth
    from .imageio_utils import save_image_grid
    from .priors.configs import cached_prior
    from .run import checkpoint_step, export_run, fit, run_folders
    from .world import parse_prompt
    from .world.motion import split_motion_caption

    out, pid, prompt = Path(spec["out"]), spec["id"], spec["prompt"]
    work = out / "runs" / pid
    with prompt_lock(work):
        cfg = load_config(spec["recipe"], list(spec["overrides"]) + [f"prompt={prompt!r}", f"output_dir={work}"])
        object_prompt, motion = split_motion_caption(prompt)
        scene = parse_prompt(object_prompt)
        point_oracle_at_truth(cfg, prompt, out / "gt")
        device = resolve_device(str(cfg.device))
        steps = int(cfg.trainer.max_steps)
        runs = [(run, checkpoint_step(run)) for run in run_folders(work)]
        for run, step in runs:  # an attempt killed before its first checkpoint: moved aside, kept
            if step < 0:
                target = out / "abandoned" / pid / run.name
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(run, target)
                print(f"moved {run} (no checkpoint) to {target}", flush=True)
        runs = [(run, step) for run, step in runs if step >= 0]
        if len(runs) > 1:
            raise DreamkitError(f"{work} holds {len(runs)} run folders with checkpoints — keep one (the batch fits "
                                "each prompt once)")
        export_formats = list(cfg.export.formats) + (["mp4"] if cfg.export.turntable else [])
        if runs and runs[0][1] >= steps:
            run_dir = runs[0][0]
            if export_formats and not (run_dir / "exports").is_dir():  # finished, killed before its exports
                export_run(run_dir, export_formats)
        else:
            prior = cached_prior(cfg.prior, device)
            if runs:
                print(f"resuming {runs[0][0]} from step {runs[0][1]}", flush=True)
            run_dir = fit(cfg, resume_dir=runs[0][0] if runs else None, prior=prior)
            if cfg.get("report", True):
                from .report import write_report

                try:
                    write_report(run_dir)
                except (DreamkitError, OSError, ValueError) as err:
                    print(f"warning: the run page was not written ({err})", flush=True)
        row: dict = {"run_dir": str(run_dir), "final_loss": _final_loss(run_dir)}
        if scene is not None:
            row["kind"] = scene.kind
            frames = _score_run(run_dir, scene, row, motion=motion)
        else:
            from .components import load_representation_from_checkpoint
            from .export.video import render_turntable
            from .run import load_run

            _, run_cfg, ckpt = load_run(run_dir)
            model = load_representation_from_checkpoint(run_cfg, ckpt, device)
            frames = render_turntable(model, frames=8, resolution=96,
                                      background=torch.tensor(list(run_cfg.background.color)), device=device)
        strip = work / STRIP
        tmp = work / f".strip.tmp-{os.getpid()}.png"
        save_image_grid(frames, tmp, columns=8)
        os.replace(tmp, strip)
        row["strip"] = str(strip)
        return json.loads(json.dumps(row, default=_plain))


# ------------------------------------------------------------------------------------------------------ the driver
class _Progress:
    """Done, running, failed and an ETA over the prompts: a rich bar in a terminal, one line per event elsewhere."""

    def __init__(self, total: int, done: int, size: int, stream=None):
        self.total, self.done, self.failed, self.running = total, done, 0, 0
        self.size = max(1, size)
        self.times: list[float] = []
        self.stream = stream or sys.stdout
        self.bar = None
        if getattr(self.stream, "isatty", lambda: False)():
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.bar = Progress(TextColumn("batch"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                                TextColumn("{task.fields[state]}"), redirect_stdout=False)
            self.task = self.bar.add_task("prompts", total=total, completed=done, state="")
            self.bar.start()

    def eta(self, left: int) -> str:
        if not self.times:
            return "?"
        seconds = sum(self.times) / len(self.times) * math.ceil(left / self.size)
        return str(_dt.timedelta(seconds=int(seconds)))

    def status(self, left: int) -> str:
        return (f"{self.done}/{self.total} done · {self.running} running · {self.failed} failed · "
                f"ETA {self.eta(left)}")

    def say(self, text: str, left: int) -> None:
        if self.bar is not None:
            self.bar.update(self.task, completed=self.done, state=self.status(left))
            self.bar.console.print(text)
        else:
            print(f"[{self.status(left)}] {text}", file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


#: columns of the results table (world scores: :mod:`dreamkit.eval.benchmark`)
COLUMNS = ["prompt", "state", "attempts", "wall_s", "final_loss", "run_dir"]
WORLD_COLUMNS = ["kind", "ok", "nearest_shape", "colour", "shape_ok", "colour_ok", "size_ok", "parts", "fronts",
                 "fronts_fit", "chamfer_norm", "iou_norm"]


def _fmt(value: Any) -> str:
    if isinstance(value, bool):
        return "✓" if value else "✗"
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def write_results(out: Path, manifest: dict) -> list[dict]:
    """results.csv, results.md and contact_sheet.png (one row of 8 turntable frames per finished prompt, in the
    prompts' order) from the manifest."""
    rows = []
    for entry in manifest["prompts"]:
        row = {k: entry.get(k) for k in ("prompt", "state", "attempts", "wall_s", "final_loss", "run_dir")}
        row.update(entry.get("scores") or {})
        row["error"] = entry.get("error") or ""
        rows.append(row)
    world = any(entry.get("scores", {}).get("kind") for entry in manifest["prompts"])
    columns = COLUMNS + (WORLD_COLUMNS if world else []) + ["error"]
    tmp = out / f".results.csv.tmp-{os.getpid()}"
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, out / "results.csv")
    done = [r for r in rows if r["state"] == "done"]
    lines = [f"# dreamkit batch — `{manifest['recipe']}` {' '.join(manifest['overrides'])}", "",
             f"- {len(done)} of {len(rows)} prompts done, "
             f"{sum(1 for r in rows if r['state'] == 'failed')} failed; fit wall time "
             f"{sum(float(r['wall_s'] or 0) for r in rows):.0f} s in all"]
    singles = [r for r in done if r.get("kind") == "single"]
    if singles:
        lines.append(f"- tiny-world single objects with the `dreamkit eval` verdict (`ok`): "
                     f"{sum(1 for r in singles if r.get('ok'))}/{len(singles)}")
    lines += ["", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        lines.append("| " + " | ".join(_fmt(r.get(c)).replace("|", "\\|") for c in columns) + " |")
    lines += ["", "![contact sheet](contact_sheet.png)", ""]
    (out / "results.md").write_text("\n".join(lines), encoding="utf-8")
    strips = [Path(e["strip"]) for e in manifest["prompts"] if e.get("state") == "done" and e.get("strip")
              and Path(e["strip"]).is_file()]
    if strips:
        import imageio.v3 as iio
        import numpy as np

        images = [iio.imread(p) for p in strips]
        width = max(im.shape[1] for im in images)
        images = [np.pad(im, ((0, 0), (0, width - im.shape[1]), (0, 0)), constant_values=255) for im in images]
        tmp = out / f".contact_sheet.tmp-{os.getpid()}.png"
        iio.imwrite(tmp, np.concatenate(images, axis=0))
        os.replace(tmp, out / "contact_sheet.png")
    return rows


def run_batch(recipe: str, prompt_spec: Sequence[str], out: Optional[Path] = None, overrides: Sequence[str] = (),
              address: Optional[str] = None, jobs: Optional[int] = None, cpus_per_fit: Optional[float] = None,
              gpus_per_fit: float = 0.0, max_retries: int = 1, command: str = "", stream=None) -> Path:
    """Fit every prompt (see the module docstring); returns the batch folder."""
    from .distributed import world_size_of
    from .engine import Engine, Task, graceful_signals

    stream = stream or sys.stdout
    threads = max(1, int(cpus_per_fit)) if cpus_per_fit is not None else None
    cpus_per_fit = 1.0 if cpus_per_fit is None else float(cpus_per_fit)
    if int(max_retries) < 0:
        raise DreamkitError(f"--max-retries {max_retries}: use 0 (never retry) or more")
    prompts, label = resolve_prompt_list(prompt_spec)
    identity, first = _identity(recipe, overrides, prompts)
    if world_size_of(first) > 1:
        raise DreamkitError("dreamkit batch runs each fit in one process: drop trainer.devices / trainer.num_nodes "
                            "(share GPUs between fits with --gpus-per-fit 0.25)")
    out = Path(out) if out else Path("outputs") / "batch" / f"{Path(recipe).stem}-{label}"
    out.mkdir(parents=True, exist_ok=True)
    engine = Engine(jobs=jobs, address=address, cpus_per_job=cpus_per_fit, gpus_per_job=gpus_per_fit,
                    threads=threads)
    with driver_lock(out):
        path = out / MANIFEST
        ids = [prompt_id(i, p) for i, p in enumerate(prompts)]
        if path.exists():
            manifest = read_manifest(path)
            if manifest.get("identity") != identity or [e.get("prompt") for e in manifest["prompts"]] != prompts:
                raise DreamkitError(f"{out} holds a batch of another recipe, overrides or prompt list "
                                    f"({manifest.get('recipe')} {' '.join(manifest.get('overrides', []))}) — pass "
                                    "another --out, or the same command as before to continue it")
        elif any(p.name != LOCK for p in out.iterdir()):
            raise DreamkitError(f"{out} exists and is not a batch folder (no {MANIFEST}) — pass another --out "
                                "(results are never overwritten)")
        else:
            manifest = {"format": FORMAT, "identity": identity, "recipe": recipe, "overrides": list(overrides),
                        "command": command, "created": _dt.datetime.now().isoformat(timespec="seconds"),
                        "prompts": [{"id": pid, "prompt": p, "state": "pending", "attempts": 0, "failures": 0,
                                     "run_dir": None, "wall_s": 0.0, "final_loss": None, "error": None}
                                    for pid, p in zip(ids, prompts)]}
        entries = {e["id"]: e for e in manifest["prompts"]}
        resumed = [e for e in manifest["prompts"] if e["state"] == "running"]
        for entry in resumed:  # the driver that ran them is gone (we hold the lock): resumable
            entry["state"] = "pending"
        todo = [e for e in manifest["prompts"] if e["state"] == "pending"
                or (e["state"] == "failed" and e["failures"] <= int(max_retries))]
        done = sum(1 for e in manifest["prompts"] if e["state"] == "done")
        write_json_atomic(path, manifest)
        print(f"batch {out}: {len(prompts)} prompts with {recipe}; {done} done earlier (skipped), "
              f"{len(resumed)} interrupted (resumed from their checkpoints), "
              f"{sum(1 for e in todo if e['state'] == 'failed')} failed (retried), {len(todo)} to run", file=stream,
              flush=True)

        def task(entry: dict) -> Task:
            spec = {"out": str(out.resolve()), "id": entry["id"], "prompt": entry["prompt"], "recipe": recipe,
                    "overrides": list(overrides)}
            return Task(entry["id"], fit_prompt, (spec,), log=str(out.resolve() / "runs" / entry["id"] / "fit.log"))

        queue = deque(task(e) for e in todo)
        failed_for_good: list[dict] = []
        interrupted: list[dict] = []
        progress: Optional[_Progress] = None

        def left() -> int:
            return len(queue) + (progress.running if progress else 0)

        def start(t: Task) -> None:
            entry = entries[t.key]
            entry.update(state="running", attempts=int(entry["attempts"]) + 1,
                         started=_dt.datetime.now().isoformat(timespec="seconds"))
            write_json_atomic(path, manifest)
            progress.running += 1
            progress.say(f"start {entry['prompt']!r} (attempt {entry['attempts']})", left())

        def finish(outcome) -> None:
            entry = entries[outcome.key]
            progress.running -= 1
            entry["wall_s"] = round(float(entry.get("wall_s") or 0.0) + outcome.seconds, 1)
            if outcome.status == "ok":
                value = outcome.value
                scores = {k: v for k, v in value.items() if k not in ("run_dir", "final_loss", "strip")}
                entry.update(state="done", run_dir=value["run_dir"], final_loss=value["final_loss"],
                             strip=value["strip"], scores=scores, error=None,
                             finished=_dt.datetime.now().isoformat(timespec="seconds"))
                progress.done += 1
                progress.times.append(outcome.seconds)
                loss = f", loss {value['final_loss']:.4g}" if value.get("final_loss") is not None else ""
                text = f"done {entry['prompt']!r} in {outcome.seconds:.1f}s{loss}"
            elif outcome.status in ("interrupted", "busy"):
                entry.update(state="pending", error=outcome.error if outcome.status == "busy" else None)
                interrupted.append(entry)
                engine.stop()
                text = f"stopped {entry['prompt']!r}" + (f": {outcome.error}" if outcome.status == "busy" else
                                                         " (checkpoint written; resumes next time)")
            else:  # error, or its worker died
                entry.update(failures=int(entry["failures"]) + 1, error=outcome.error)
                if entry["failures"] <= int(max_retries) and not engine.stopping:
                    entry["state"] = "pending"
                    queue.append(task(entry))
                    text = f"failed {entry['prompt']!r}: {outcome.error} — retrying ({entry['failures']} of " \
                           f"{max_retries} retries)"
                else:
                    entry["state"] = "failed"
                    progress.failed += 1
                    failed_for_good.append(entry)
                    text = f"failed {entry['prompt']!r}: {outcome.error} (log: {out / 'runs' / entry['id']}/fit.log)"
            write_json_atomic(path, manifest)
            progress.say(text, left())
            if outcome.status == "ok":
                write_results(out, manifest)

        signals = None
        try:
            if queue:  # (nothing to run: no Ray started)
                with engine, graceful_signals(engine, "batch") as signals:
                    progress = _Progress(len(prompts), done, engine.size, stream)
                    where = f"Ray at {address}" if address else ("Ray on this machine" if engine.parallel
                                                                  else "this process, one after another")
                    print(f"running on {where}: {engine.size if engine.parallel else 1} fit(s) at a time",
                          file=stream, flush=True)
                    engine.run(queue, start, finish)
        except KeyboardInterrupt:  # a second Ctrl-C: the workers die with the local Ray instance
            for entry in manifest["prompts"]:
                if entry["state"] == "running":
                    entry["state"] = "pending"
            write_json_atomic(path, manifest)
            raise Interrupted(f"stopped at once — run the same command again to continue {out}", 2) from None
        finally:
            if progress is not None:
                progress.close()
        write_results(out, manifest)
        n_done = sum(1 for e in manifest["prompts"] if e["state"] == "done")
        print(f"wrote {out / 'results.md'}, results.csv, contact_sheet.png — {n_done}/{len(prompts)} done",
              file=stream, flush=True)
        if interrupted or (signals or {}).get("signum"):
            signum = (signals or {}).get("signum") or 2
            raise Interrupted(f"interrupted — {n_done} of {len(prompts)} prompts done; run the same command again to "
                              f"continue (interrupted fits resume from their checkpoints)", signum)
        if failed_for_good:
            raise BatchIncomplete(f"{len(failed_for_good)} of {len(prompts)} prompts failed after "
                                  f"{int(max_retries) + 1} attempt(s), e.g. {failed_for_good[0]['prompt']!r}: "
                                  f"{failed_for_good[0]['error']} — see {out / 'results.md'}; run again with "
                                  "--max-retries N to retry them")
    return out
