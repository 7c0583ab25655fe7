"""One fit across processes (``trainer.devices``, ``trainer.strategy=ddp``, ``trainer.num_nodes``): Lightning's DDP
strategy starts the ranks and the process group; this module holds what dreamkit adds to it.

Why the model is not wrapped in ``DistributedDataParallel``: densification replaces the Gaussians' parameters by
new, larger or smaller tensors every ``refine_every`` steps, and DDP's reducer keeps the parameters it saw when it was
built (its buckets and gradient hooks), so after the first densification it would reduce stale tensors or fail.
:class:`DreamkitDDPStrategy` is Lightning's ``DDPStrategy`` (launcher, process group, barriers, checkpoint writing on
rank zero) without the wrapper, and the system all-reduces its gradients itself after each backward
(:func:`average_gradients`: one flat buffer, whatever shapes the parameters have at that step).

How one step is shared: every rank draws the *whole* batch from the same generators (cameras, background, the
guidance's timesteps and noise: the streams of a one-process run) and keeps its own slice of it
(:func:`shard_index`); each rank's loss is a mean over its own images, so the mean of the ranks' gradients is the
gradient of the one-process loss over the whole batch. Densification accumulates its view-space gradient statistics
summed over the ranks (:func:`all_reduce_sum`), so every rank makes the same edits. What a guidance draws beyond the
batch's timesteps and noise (ASD's second timestep, VSD's φ step) comes from a stream of the rank's own
(:func:`rank_seed`), saved per rank in checkpoints.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Any, Sequence

import torch

__all__ = ["RankInfo", "rank_info", "shard_index", "rank_seed", "all_reduce_sum", "average_gradients",
           "make_ddp_strategy", "die_with_parent", "world_size_of"]


@dataclass(frozen=True)
class RankInfo:
    """This process's place in a multi-process fit (0 of 1 when there is none)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_zero(self) -> bool:
        return self.rank == 0


def world_size_of(cfg: Any) -> int:
    """How many processes a config's fit runs in: ``trainer.devices × trainer.num_nodes``."""
    return int(cfg.trainer.devices) * int(cfg.trainer.num_nodes)


def rank_info(cfg: Any = None) -> RankInfo:
    """This process's rank: from the initialised process group if there is one, else from the environment that
    Lightning's launcher (or a cluster's: SLURM, torchrun) gives the processes it starts, before the group exists."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return RankInfo(torch.distributed.get_rank(), torch.distributed.get_world_size(),
                        int(os.environ.get("LOCAL_RANK", 0)))
    world = world_size_of(cfg) if cfg is not None else int(os.environ.get("WORLD_SIZE", 1))
    local = int(os.environ.get("LOCAL_RANK", 0))
    node = int(os.environ.get("NODE_RANK", os.environ.get("GROUP_RANK", 0)))
    per_node = int(cfg.trainer.devices) if cfg is not None else max(1, world)
    rank = int(os.environ.get("RANK", node * per_node + local))
    return RankInfo(rank, world, local)


def is_lead_process() -> bool:
    """False in the processes of ranks > 0 of a fit in several processes (from the environment their launcher gave
    them: LOCAL_RANK, NODE_RANK, RANK); True everywhere else."""
    return all(int(os.environ.get(name, 0) or 0) == 0 for name in ("LOCAL_RANK", "NODE_RANK", "RANK"))


def shard_index(batch_per_particle: int, particles: int, rank: int, world: int) -> torch.Tensor:
    """[B·P / W] the images of a batch (P particle blocks of B images each, particle-major, as the sampler draws
    them) that rank ``rank`` of ``world`` renders: its contiguous share of every particle's block, so each rank's
    slice is again P equal blocks (the layout :class:`~dreamkit.representations.particles.Particles` expects)."""
    if batch_per_particle % world:
        raise ValueError(f"a batch of {batch_per_particle} images per particle does not split over {world} ranks")
    share = batch_per_particle // world
    return torch.cat([torch.arange(p * batch_per_particle + rank * share, p * batch_per_particle + (rank + 1) * share)
                      for p in range(particles)])


def rank_seed(seed: int, rank: int) -> int:
    """The seed of rank ``rank``'s own stream (rank 0 of a one-process fit never uses it: its own draws come from the
    batch's stream, as before there were ranks)."""
    return int(seed) + 3 + 1_000_003 * (int(rank) + 1)


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over the ranks in place (a no-op without a process group of more than one)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized() \
            and torch.distributed.get_world_size() > 1:
        torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.SUM)
    return tensor


def average_gradients(params: Sequence[torch.nn.Parameter], scalars: Sequence[torch.Tensor] = ()) \
        -> list[torch.Tensor]:
    """Average the gradients of ``params`` over the ranks in place (one all-reduce of one flat buffer; a parameter
    without a gradient counts as zeros, and gets them) and return the ranks' means of ``scalars`` (the step's loss
    and its terms). All ranks must pass the same parameters in the same order with the same shapes."""
    world = torch.distributed.get_world_size()
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    flat = [p.grad.reshape(-1) for p in params] + [s.detach().reshape(-1).to(params[0].grad.dtype)
                                                   for s in scalars]
    buffer = torch.cat(flat) if flat else torch.zeros(0)
    torch.distributed.all_reduce(buffer, op=torch.distributed.ReduceOp.SUM)
    buffer /= world
    offset = 0
    for p in params:
        n = p.grad.numel()
        p.grad.copy_(buffer[offset:offset + n].view_as(p.grad))
        offset += n
    means = []
    for s in scalars:
        means.append(buffer[offset].to(s.dtype).reshape(s.shape))
        offset += 1
    return means


def make_ddp_strategy(cfg: Any, device: torch.device):
    """Lightning's DDP strategy without the ``DistributedDataParallel`` wrapper (see the module docstring): gloo on
    the CPU, nccl on CUDA; the parameters are broadcast from rank zero when training starts."""
    from pytorch_lightning.strategies import DDPStrategy

    class DreamkitDDPStrategy(DDPStrategy):
        """DDP whose gradients the system averages itself (parameters change shape at densification)."""

        strategy_name = "dreamkit_ddp"

        def configure_ddp(self) -> None:
            from torch.distributed.distributed_c10d import _get_default_group

            # what DDP's constructor would do: every rank starts from rank zero's parameters and buffers
            for tensor in list(self.model.parameters()) + list(self.model.buffers()):
                torch.distributed.broadcast(tensor.data, src=0, group=_get_default_group())

    return DreamkitDDPStrategy(process_group_backend="nccl" if device.type == "cuda" else "gloo")


def launched_by_lightning() -> bool:
    """True in the processes of ranks > 0 that Lightning's launcher started (it sets LOCAL_RANK for them)."""
    return "LOCAL_RANK" in os.environ and int(os.environ.get("LOCAL_RANK", 0)) > 0


def die_with_parent() -> None:
    """On Linux, ask the kernel for SIGTERM when the parent process dies (prctl PR_SET_PDEATHSIG), so a process we
    start (a fit's other ranks) does not outlive a killed parent; a fit stops on SIGTERM as on Ctrl-C. Elsewhere a
    no-op."""
    import signal

    if not sys.platform.startswith("linux"):
        return
    import ctypes

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM))  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def gather_states(state: torch.Tensor) -> list[torch.Tensor]:
    """Every rank's ``state`` (a uint8 generator state, the same size on every rank), in rank order; ``[state]``
    without a process group."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()) \
            or torch.distributed.get_world_size() == 1:
        return [state]
    device = _collective_device()
    out = [torch.empty_like(state, device=device) for _ in range(torch.distributed.get_world_size())]
    torch.distributed.all_gather(out, state.contiguous().to(device))
    return [s.cpu() for s in out]


def _collective_device() -> torch.device:
    """Where a host value must be for a collective: the rank's GPU with nccl, the CPU with gloo."""
    if torch.distributed.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def reduce_any(flag: bool) -> bool:
    """True when ``flag`` is true on any rank (itself without a process group)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()) \
            or torch.distributed.get_world_size() == 1:
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=_collective_device())
    torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MAX)
    return bool(value.item() > 0)
