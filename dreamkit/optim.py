"""Each trainable component owns its optimizer and its update cadence.

A component (the representation, a learned background, guidance with trainable parts such as VSD's φ) offers
parameter groups ``{"name", "params", "lr_schedule", "lr_key"}`` — a learning rate that may be a schedule of the step —
and the system builds one Adam per component from them (:func:`build_optimizers`). Per-parameter Adam makes one
optimizer per component the same update as one optimizer holding every group; what changes is ownership: a
densification strategy receives only the representation's optimizer, φ trains every ``lora_every`` steps on its own
schedule, and checkpoints hold one optimizer state per component.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from .schedule import value_at


@dataclass
class ComponentOptimizer:
    """One component's optimizer: its learning-rate schedules (one per group) and cadence (step when
    ``step % every == 0``)."""

    name: str
    optimizer: torch.optim.Optimizer
    schedules: list[tuple[Any, str]] = field(default_factory=list)
    every: int = 1

    def due(self, step: int) -> bool:
        return step % self.every == 0

    def set_learning_rates(self, step: int, optimizer: Any = None) -> None:
        """Set each group's lr at ``step`` (on ``optimizer`` when given: the same optimizer as Lightning holds it)."""
        opt = optimizer if optimizer is not None else self.optimizer
        for group, (schedule, key) in zip(opt.param_groups, self.schedules):
            group["lr"] = value_at(schedule, step, key)


def build_optimizer(name: str, groups: list[dict], every: int = 1) -> ComponentOptimizer:
    """Adam over ``groups`` (each with ``lr_schedule`` and ``lr_key``), learning rates at step 0."""
    if every < 1:
        from .errors import ConfigError

        raise ConfigError(f"{name}: an update cadence must be ≥ 1 step, got {every}")
    schedules = [(g["lr_schedule"], g["lr_key"]) for g in groups]
    clean = [{k: v for k, v in g.items() if k not in ("lr_schedule", "lr_key")} for g in groups]
    for g, (schedule, key) in zip(clean, schedules):
        g["lr"] = value_at(schedule, 0, key)
    return ComponentOptimizer(name, torch.optim.Adam(clean, lr=1e-3), schedules, every)
