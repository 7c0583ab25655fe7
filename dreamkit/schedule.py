"""Scalar schedules: any number in a config may instead be a piecewise-linear function of the training step.

Accepted forms:

* a number ``v`` — constant;
* ``[start_step, start_value, end_value, end_step]`` — threestudio's form: ``start_value`` until ``start_step``,
  linear to ``end_value`` at ``end_step``, constant after;
* ``[[step_0, value_0], [step_1, value_1], ...]`` — several segments: linear between consecutive points (steps
  increasing), constant before the first and after the last.
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Any, Sequence

from .errors import ConfigError


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


@dataclass(frozen=True)
class Schedule:
    steps: tuple[float, ...]
    values: tuple[float, ...]

    @staticmethod
    def parse(value: Any, key: str = "value") -> "Schedule":
        """Validate a config value and return its schedule; raises ConfigError naming ``key`` if malformed."""
        if isinstance(value, Schedule):
            return value
        if _is_number(value):
            return Schedule((0.0,), (float(value),))
        if hasattr(value, "__iter__") and not isinstance(value, (str, bytes, dict)):
            items = list(value)
            if len(items) == 4 and all(_is_number(v) for v in items):
                s0, v0, v1, s1 = items
                if s1 < s0:
                    raise ConfigError(f"schedule {key}={items}: end_step {s1} is before start_step {s0}; "
                                      "the form is [start_step, start_value, end_value, end_step]")
                if s1 == s0:
                    return Schedule((float(s0),), (float(v1),))
                return Schedule((float(s0), float(s1)), (float(v0), float(v1)))
            if items and all(hasattr(p, "__len__") and len(p) == 2 and all(_is_number(q) for q in p) for p in items):
                steps = [float(p[0]) for p in items]
                if any(b <= a for a, b in zip(steps, steps[1:])):
                    raise ConfigError(f"schedule {key}: steps must increase, got {steps}")
                return Schedule(tuple(steps), tuple(float(p[1]) for p in items))
        raise ConfigError(
            f"{key}={value!r} is not a number or a schedule; use a number, [start_step, start_value, end_value, "
            "end_step], or [[step, value], [step, value], ...]"
        )

    def __call__(self, step: float) -> float:
        if step <= self.steps[0]:
            return self.values[0]
        if step >= self.steps[-1]:
            return self.values[-1]
        i = bisect.bisect_right(self.steps, step)
        s0, s1 = self.steps[i - 1], self.steps[i]
        v0, v1 = self.values[i - 1], self.values[i]
        return v0 + (v1 - v0) * (step - s0) / (s1 - s0)

    @property
    def is_constant(self) -> bool:
        return len(set(self.values)) == 1


def value_at(value: Any, step: float, key: str = "value") -> float:
    """Evaluate a number-or-schedule config value at ``step``."""
    return Schedule.parse(value, key)(step)


def range_at(value: Sequence[Any], step: float, key: str = "range") -> tuple[float, float]:
    """Evaluate a ``[low, high]`` pair whose ends may each be schedules."""
    if not hasattr(value, "__len__") or len(value) != 2:
        raise ConfigError(f"{key}={value!r} must be a [low, high] pair (each a number or a schedule)")
    low, high = value_at(value[0], step, key + "[0]"), value_at(value[1], step, key + "[1]")
    if high < low:
        raise ConfigError(f"{key}: low {low} > high {high} at step {step}")
    return low, high
