"""Many fits at once: the engine behind ``dreamkit batch``, ``dreamkit eval --jobs N`` and ``dreamkit ablate --jobs N``.

Ray does the scheduling (placing workers on the machines and GPUs of a cluster by the resources they ask for, noticing
a lost worker or node); dreamkit adds no scheduler of its own. The engine starts N workers (Ray actors, each asking for
``cpus_per_job`` CPUs and ``gpus_per_job`` GPUs, e.g. 0.25 to share a GPU four ways) and hands each queued task to a
worker that is free. A worker is one long-lived process: what it loads once (the frozen prior, through
:func:`dreamkit.priors.configs.cached_prior`) serves every fit it runs.

``jobs=1`` without ``address`` runs the tasks one after another in this process, and needs no Ray (Ray is the optional
extra ``pip install -e ".[scale]"``, imported only here and only when a parallel run starts).

Stopping: :meth:`Engine.stop` (the drivers call it on Ctrl-C or SIGTERM) hands out no more tasks and asks every busy
worker to stop its fit as Ctrl-C would (:data:`dreamkit.callbacks.STOP_REQUESTED`: checkpoint, then stop); those tasks
come back ``interrupted`` and are resumed from their checkpoints by the next run. A local Ray instance lives as long
as the driver: if the driver is killed, its workers die with it (Ray's fate sharing), so no fit outlives it.
"""
from __future__ import annotations

import contextlib
import os
import sys
import time
import traceback
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from .errors import DreamkitError, Interrupted

__all__ = ["Task", "Outcome", "Engine", "import_ray", "run_task", "Busy", "SCALE_INSTALL"]

#: how to install the optional extra
SCALE_INSTALL = 'pip install -e ".[scale]" (or pip install "ray>=2.9")'


def import_ray():
    """The ``ray`` module, or a one-line error naming the install command."""
    try:
        import ray
    except ImportError:
        raise DreamkitError(f"running fits in parallel (--jobs N > 1, --address, dreamkit batch) needs Ray: "
                            f"{SCALE_INSTALL}; --jobs 1 runs them one after another without it") from None
    return ray


class Busy(DreamkitError):
    """A task found its work already being done by another process (e.g. a worker of an earlier driver that is still
    finishing): not a failure, nothing was done."""


@dataclass
class Task:
    """One unit of work: ``fn(*args)`` in a worker. ``fn`` must be importable (a module-level function) and ``args``
    plain values; ``log``: a file that receives the task's stdout and stderr in a parallel run."""

    key: str
    fn: Callable[..., Any]
    args: tuple = ()
    log: Optional[str] = None
    #: free-form data of the caller (attempt number, ...), returned with the outcome
    meta: dict = field(default_factory=dict)


@dataclass
class Outcome:
    """What a task came back with. ``status``: ok (``value`` holds fn's result) | error (``error``: one line) |
    interrupted (stopped on request, checkpoint written) | busy (someone else is doing it) | lost (the worker
    process died: killed, out of memory, node gone)."""

    key: str
    status: str
    value: Any = None
    error: str = ""
    seconds: float = 0.0
    meta: dict = field(default_factory=dict)
    worker: str = ""


def run_task(task: Task, redirect: bool = True) -> Outcome:
    """Run ``task`` here and report how it ended (never raises, except KeyboardInterrupt in this process)."""
    from .callbacks import STOP_REQUESTED

    STOP_REQUESTED.clear()
    t0 = time.perf_counter()
    where = f"{os.uname().nodename}:{os.getpid()}" if hasattr(os, "uname") else str(os.getpid())
    log = None
    try:
        with contextlib.ExitStack() as stack:
            if redirect and task.log:
                os.makedirs(os.path.dirname(task.log) or ".", exist_ok=True)
                log = stack.enter_context(open(task.log, "a", buffering=1))
                stack.enter_context(contextlib.redirect_stdout(log))
                stack.enter_context(contextlib.redirect_stderr(log))
            try:
                value = task.fn(*task.args)
            except Interrupted as err:
                return Outcome(task.key, "interrupted", error=str(err), seconds=time.perf_counter() - t0,
                               meta=task.meta, worker=where)
            except Busy as err:
                return Outcome(task.key, "busy", error=str(err), seconds=time.perf_counter() - t0, meta=task.meta,
                               worker=where)
            except DreamkitError as err:
                line = str(err).splitlines()[0] if str(err) else type(err).__name__
                print(f"error: {line}", file=sys.stderr, flush=True)
                return Outcome(task.key, "error", error=line, seconds=time.perf_counter() - t0, meta=task.meta,
                               worker=where)
            except Exception as err:  # a bug or the environment: the traceback goes to the task's log
                traceback.print_exc()
                line = f"{type(err).__name__}: {' '.join(str(err).split())[:300]}"
                return Outcome(task.key, "error", error=line, seconds=time.perf_counter() - t0, meta=task.meta,
                               worker=where)
    finally:
        STOP_REQUESTED.clear()
    return Outcome(task.key, "ok", value=value, seconds=time.perf_counter() - t0, meta=task.meta, worker=where)


class _WorkerBody:
    """The Ray actor's class (made a Ray actor in :meth:`Engine._start_ray`): one process that runs tasks one at a
    time; ``stop`` arrives on a second thread while a task runs (``max_concurrency=2``)."""

    def __init__(self, threads: int):
        import torch

        if threads > 0:
            torch.set_num_threads(threads)

    def run(self, task: Task) -> Outcome:
        return run_task(task)

    def stop(self) -> None:
        from .callbacks import STOP_REQUESTED

        STOP_REQUESTED.set()

    def pid(self) -> int:
        return os.getpid()


class Engine:
    """Runs queued :class:`Task` s: in this process one after another (``jobs=1``, no ``address``), or on ``jobs``
    Ray workers (default: as many as the cluster's CPUs and GPUs hold at ``cpus_per_job`` / ``gpus_per_job`` each).

    Use as a context manager; :meth:`run` takes a deque that ``on_outcome`` may append to (retries)."""

    def __init__(self, jobs: Optional[int] = None, address: Optional[str] = None, cpus_per_job: float = 1.0,
                 gpus_per_job: float = 0.0, threads: Optional[int] = None):
        if jobs is not None and int(jobs) < 1:
            raise DreamkitError(f"--jobs {jobs}: use 1 or more fits at a time")
        if cpus_per_job <= 0:
            raise DreamkitError(f"--cpus-per-fit {cpus_per_job}: give each fit at least a part of a CPU (e.g. 1)")
        if gpus_per_job < 0:
            raise DreamkitError(f"--gpus-per-fit {gpus_per_job}: use 0 (CPU fits) or a share of a GPU such as 0.25")
        self.jobs = None if jobs is None else int(jobs)
        self.address = address
        self.cpus_per_job = float(cpus_per_job)
        self.gpus_per_job = float(gpus_per_job)
        #: torch threads of a task (None: a worker's CPUs on Ray; in this process, torch's own setting)
        self.threads = threads
        self.parallel = not (self.jobs == 1 and address is None)
        self.stopping = False
        self._ray = None
        self._owns_ray = False
        self._actor_cls = None
        self.workers: list = []
        self.size = 1

    # -- life cycle ------------------------------------------------------------------------------------------------
    def __enter__(self) -> "Engine":
        if self.parallel:
            self._start_ray()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._ray is None:
            return
        for actor in self.workers:
            with contextlib.suppress(Exception):
                self._ray.kill(actor)
        self.workers = []
        if self._owns_ray:
            with contextlib.suppress(Exception):
                self._ray.shutdown()
        self._ray = None

    def _start_ray(self) -> None:
        import logging

        ray = import_ray()
        self._ray = ray
        if not ray.is_initialized():
            kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False,
                                      "logging_level": logging.ERROR}
            if self.address:
                kwargs["address"] = self.address
            else:  # a local instance as large as asked for (more fits than cores share the cores)
                import math

                kwargs["num_cpus"] = max(os.cpu_count() or 1, math.ceil((self.jobs or 1) * self.cpus_per_job))
                # Ray lowers its workers' priority (nice 15) by default; here the workers are the work, and a fit
                # on them should get the CPU a `dreamkit fit` would (the raylet reads this when it starts)
                os.environ.setdefault("RAY_worker_niceness", "0")
            try:
                ray.init(**kwargs)
            except ConnectionError as err:
                raise DreamkitError(f"cannot reach the Ray cluster at --address {self.address}: {err} — start it "
                                    "with `ray start --head` on its head node, or drop --address for a local "
                                    "instance") from None
            self._owns_ray = True
        resources = ray.cluster_resources()
        cpus, gpus = float(resources.get("CPU", 0)), float(resources.get("GPU", 0))
        if self.gpus_per_job > 0 and gpus < self.gpus_per_job:
            raise DreamkitError(f"--gpus-per-fit {self.gpus_per_job:g}: the Ray cluster has {gpus:g} GPU(s) — use "
                                "--gpus-per-fit 0 for CPU fits")
        fits = int(cpus // self.cpus_per_job)
        if self.gpus_per_job > 0:
            fits = min(fits, int(round(gpus / self.gpus_per_job, 6)))
        if fits < 1:
            raise DreamkitError(f"--cpus-per-fit {self.cpus_per_job:g}: the Ray cluster has {cpus:g} CPU(s) — ask "
                                "for fewer CPUs per fit")
        self.size = self.jobs if self.jobs is not None else fits
        if self.jobs is not None and self.jobs > fits:
            print(f"note: {self.jobs} fits at a time asked, the cluster holds {fits} at {self.cpus_per_job:g} "
                  f"CPU(s){f' and {self.gpus_per_job:g} GPU' if self.gpus_per_job else ''} each; the others wait "
                  "for room", file=sys.stderr, flush=True)
        self._actor_cls = ray.remote(_WorkerBody).options(num_cpus=self.cpus_per_job, num_gpus=self.gpus_per_job,
                                                          max_concurrency=2, max_restarts=0)

    def _new_worker(self):
        actor = self._actor_cls.remote(self.threads or max(1, int(self.cpus_per_job)))
        self.workers.append(actor)
        return actor

    # -- running ---------------------------------------------------------------------------------------------------
    def stop(self) -> None:
        """Hand out no more tasks; busy workers are asked to stop their fits (checkpoint first)."""
        self.stopping = True

    def run(self, queue: deque, on_start: Callable[[Task], None], on_outcome: Callable[[Outcome], None]) -> None:
        """Run the tasks of ``queue`` (which ``on_outcome`` may extend) until it is empty or :meth:`stop` is called
        and the busy tasks have come back."""
        if not self.parallel:
            if self.threads:
                import torch

                torch.set_num_threads(int(self.threads))
            while queue and not self.stopping:
                task = queue.popleft()
                on_start(task)
                on_outcome(run_task(task))
            return
        ray = self._ray
        idle = [self._new_worker() for _ in range(max(1, min(self.size, len(queue))))]
        busy: dict[Any, tuple[Any, Task]] = {}
        stop_sent = False
        while (queue and not self.stopping) or busy:
            while idle and queue and not self.stopping:
                task = queue.popleft()
                actor = idle.pop()
                busy[actor.run.remote(task)] = (actor, task)
                on_start(task)
            if self.stopping and not stop_sent:
                for actor, _ in busy.values():
                    actor.stop.remote()
                stop_sent = True
            if not busy:
                continue
            ready, _ = ray.wait(list(busy), num_returns=1, timeout=0.5)
            for ref in ready:
                actor, task = busy.pop(ref)
                try:
                    outcome = ray.get(ref)
                except ray.exceptions.RayActorError as err:  # the worker process died (killed, OOM, node lost)
                    outcome = Outcome(task.key, "lost", error=f"its worker died: {' '.join(str(err).split())[:200]}",
                                      meta=task.meta)
                    self.workers.remove(actor)
                    actor = self._new_worker()
                except ray.exceptions.RayError as err:
                    outcome = Outcome(task.key, "error", error=f"{type(err).__name__}: "
                                      f"{' '.join(str(err).split())[:300]}", meta=task.meta)
                idle.append(actor)
                on_outcome(outcome)


@contextlib.contextmanager
def graceful_signals(engine: Engine, what: str = "run"):
    """While the block runs, the first SIGINT / SIGTERM asks ``engine`` to stop cleanly (running fits checkpoint) and
    says so; a second one stops at once (KeyboardInterrupt). The previous handlers come back afterwards."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    state = {"signum": None}

    def handler(signum, frame):
        if state["signum"] is not None:
            raise KeyboardInterrupt
        state["signum"] = signum
        print(f"\n{signal.Signals(signum).name}: stopping the {what} — running fits write a checkpoint first "
              "(again to stop at once)", file=sys.stderr, flush=True)
        engine.stop()

    for sig in previous:
        signal.signal(sig, handler)
    try:
        yield state
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old if old is not None else signal.SIG_DFL)
