"""A run's logged metrics, read back from its CSV logs.

A fit logs with Lightning's CSVLogger into ``<run>/logs/metrics.csv`` (``train/loss``, ``train/loss_<term>``,
``train/sds_t``, ``train/num_gaussians``, ``val/psnr``, ...); a resumed fit logs into ``logs/resume-N/metrics.csv``
beside it (the first file is never rewritten). A resume repeats the steps after its checkpoint that the killed
process had already logged, so each later file replaces the earlier files' points from its first step on.
"""
from __future__ import annotations

import csv
import math
import re
from pathlib import Path

#: columns that are not metrics
_INDEX_COLUMNS = ("epoch", "step")


def metric_files(run_dir: str | Path) -> list[Path]:
    """``logs/metrics.csv`` then ``logs/resume-N/metrics.csv`` in order of N (those that exist)."""
    logs = Path(run_dir) / "logs"
    files = [logs / "metrics.csv"] if (logs / "metrics.csv").is_file() else []
    resumed = []
    if logs.is_dir():
        for folder in logs.iterdir():
            match = re.fullmatch(r"resume-(\d+)", folder.name)
            if match and (folder / "metrics.csv").is_file():
                resumed.append((int(match.group(1)), folder / "metrics.csv"))
    return files + [path for _, path in sorted(resumed)]


def _read_file(path: Path) -> dict[str, list[tuple[int, float]]]:
    series: dict[str, list[tuple[int, float]]] = {}
    with open(path, newline="", encoding="utf-8", errors="replace") as f:
        for row in csv.DictReader(f):
            try:
                step = int(float(row.get("step") or ""))
            except ValueError:
                continue
            for key, text in row.items():
                if key is None or key in _INDEX_COLUMNS or text in (None, ""):
                    continue
                try:
                    value = float(text)
                except (TypeError, ValueError):
                    continue
                if math.isfinite(value):
                    series.setdefault(str(key), []).append((step, value))
    return series


def read_metrics(run_dir: str | Path) -> dict[str, tuple[list[int], list[float]]]:
    """Every logged metric of a run as ``name -> (steps, values)``, sorted by step, resumed parts merged (later
    files win from their first step on). Non-numeric and non-finite entries are skipped; no file → ``{}``."""
    merged: dict[str, list[tuple[int, float]]] = {}
    for path in metric_files(run_dir):
        part = _read_file(path)
        steps = [s for points in part.values() for s, _ in points]
        if not steps:
            continue
        first = min(steps)
        for name in list(merged):
            merged[name] = [(s, v) for s, v in merged[name] if s < first]
        for name, points in part.items():
            merged.setdefault(name, []).extend(points)
    out = {}
    for name, points in merged.items():
        if points:
            points.sort(key=lambda p: p[0])
            out[name] = ([s for s, _ in points], [v for _, v in points])
    return out
