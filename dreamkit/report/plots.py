"""The run page's plots (matplotlib, PNG): the loss terms, and the other logged metrics one panel each."""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

#: at most this many panels in the metrics figure (the rest are left out and named under it)
MAX_PANELS = 12


def _smooth(values: Sequence[float], window: int) -> list[float]:
    """Trailing moving average (SDS losses are noisy: the raw curve is drawn faint, this over it)."""
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)  # no display needed (a report is written on a server too)
    import matplotlib.pyplot as plt

    return plt


def plot_losses(metrics: dict, path: Path) -> Optional[Path]:
    """``train/loss`` and every ``train/loss_<term>`` against the step (log scale when all positive); None when the
    run logged no loss."""
    names = [n for n in metrics if n == "train/loss" or n.startswith("train/loss_")]
    if not names:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.0), dpi=110)
    positive = True
    for i, name in enumerate(sorted(names, key=lambda n: (n != "train/loss", n))):
        steps, values = metrics[name]
        positive &= min(values) > 0
        color = f"C{i % 10}"
        window = max(1, len(values) // 25)
        if window > 1:
            ax.plot(steps, values, color=color, alpha=0.25, linewidth=0.8)
        ax.plot(steps, _smooth(values, window), color=color, linewidth=1.8 if name == "train/loss" else 1.2,
                label=name.split("/", 1)[-1] + (f" (mean of {window})" if window > 1 else ""))
    if positive:
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_title("loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_metrics(metrics: dict, path: Path) -> tuple[Optional[Path], list[str]]:
    """Every other logged metric (held-out PSNR, the diffusion timestep, gradient norms, number of Gaussians …),
    one small panel each; returns (the PNG or None, the names left out beyond :data:`MAX_PANELS`)."""
    names = sorted((n for n in metrics if not (n == "train/loss" or n.startswith("train/loss_"))),
                   key=lambda n: (not n.startswith("val/"), n))
    if not names:
        return None, []
    shown, left = names[:MAX_PANELS], names[MAX_PANELS:]
    plt = _pyplot()
    cols = min(3, len(shown))
    rows = (len(shown) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3.3 * cols, 2.4 * rows), dpi=110, squeeze=False)
    for ax, name in zip(axes.flat, shown):
        steps, values = metrics[name]
        ax.plot(steps, values, marker="o" if len(steps) < 12 else None, markersize=3, linewidth=1.2)
        ax.set_title(name, fontsize=9)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(shown):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path, left
