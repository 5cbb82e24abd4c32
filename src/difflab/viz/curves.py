"""Line plots: training loss, and noise schedules compared (alpha-bar and log-SNR against t)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on servers and CI
    import matplotlib.pyplot as plt

    return plt


def plot_loss_curve(losses: Sequence[tuple[int, float]], path: str | Path) -> Path:
    """Per-step loss (faint) and its 100-step moving average, log scale."""
    plt = _pyplot()
    steps = np.array([s for s, _ in losses])
    values = np.array([v for _, v in losses])
    figure, axis = plt.subplots(figsize=(6, 3.5), dpi=100)
    axis.plot(steps, values, alpha=0.25, linewidth=0.8, label="loss")
    window = min(100, len(values))
    if window > 1:
        smooth = np.convolve(values, np.ones(window) / window, mode="valid")
        axis.plot(steps[window - 1:], smooth, linewidth=1.5, label=f"mean of {window}")
    axis.set_yscale("log")
    axis.set_ylabel("training loss")
    return _finish(figure, [axis], "step", path)


def plot_schedules(names: Sequence[str], path: str | Path, num_timesteps: int = 1000) -> Path:
    """alpha-bar_t and log SNR_t of each named schedule, side by side."""
    from difflab.core.schedules import NoiseSchedule

    plt = _pyplot()
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8), dpi=100)
    t = np.arange(num_timesteps)
    for name in names:
        schedule = NoiseSchedule.create(name, num_timesteps)  # type: ignore[arg-type]
        left.plot(t, schedule.alphas_cumprod.numpy(), label=name)
        right.plot(t, np.log(schedule.snr.numpy()), label=name)
    left.set_title(r"signal kept: $\bar\alpha_t$")
    right.set_title(r"log SNR$_t$ = log $\bar\alpha_t / (1-\bar\alpha_t)$")
    return _finish(figure, [left, right], "t", path)


def _finish(figure, axes, xlabel: str, path: str | Path) -> Path:
    """Label, grid and legend every axis, save the figure and free it (pyplot keeps figures alive otherwise)."""
    for axis in axes:
        axis.set_xlabel(xlabel)
        axis.grid(alpha=0.3)
        axis.legend()
    figure.tight_layout()
    figure.savefig(path)
    figure.clf()
    import matplotlib.pyplot as plt

    plt.close(figure)
    return Path(path)
