"""The pictures of runs and sweeps, drawn with matplotlib: each function takes plain numbers and returns a
figure; `save` writes one to a file, `embed` turns one into a data URI for a self-contained HTML page."""

from __future__ import annotations

import math
import textwrap
from typing import Dict, List, Optional, Sequence, Tuple

COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
          "#17becf")
GREY = "#bbbbbb"


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig, path) -> None:
    fig.savefig(path, dpi=100, bbox_inches="tight")  # long tick labels and titles are never cut off
    pyplot().close(fig)


def embed(fig, dpi: int = 80) -> str:
    """The figure as a PNG data URI (closed afterwards)."""
    import base64
    import io

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    pyplot().close(fig)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def image_uri(array) -> str:
    """An H x W x 3 uint8 array as a PNG data URI, at its own size (a test image, a mosaic)."""
    import base64
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def confusion(matrix: Sequence[Sequence[int]], classes: Sequence[str], title: str = "test confusion matrix"):
    """The confusion matrix with its counts (rows: true class, columns: predicted)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 6))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    top = max(max(row) for row in matrix) or 1
    for i, row in enumerate(matrix):
        for j, v in enumerate(row):
            ax.text(j, i, str(v), ha="center", va="center", fontsize=7, color="white" if v > top / 2 else "black")
    ax.set_title(title)
    fig.tight_layout()
    return fig


def learning_curves(history: Dict[str, Dict[int, float]]):
    """Loss, accuracy (train / val / test per epoch) and the learning rate of one run, side by side."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for ax, kind in zip(axes[:2], ("loss", "acc")):
        for split, color in (("train", COLORS[0]), ("val", COLORS[1]), ("epoch_test", COLORS[2])):
            series = history.get(f"{split}_{kind}", {})
            if series:
                steps = sorted(series)
                ax.plot(steps, [series[s] for s in steps], marker="o", ms=3, color=color,
                        label=split.replace("epoch_", ""))
        ax.set_title("accuracy" if kind == "acc" else "loss")
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend()
    lr = history.get("lr", {})
    if lr:
        steps = sorted(lr)
        axes[2].plot(steps, [lr[s] for s in steps], marker="o", ms=3, color=COLORS[4])
    axes[2].set_title("learning rate (end of epoch)")
    axes[2].set_xlabel("epoch")
    axes[2].grid(alpha=0.3)
    fig.tight_layout()
    return fig


def overlaid_curves(histories: Dict[str, Dict[str, Dict[int, float]]], keys=("val_acc", "val_loss", "train_loss")):
    """Several runs' curves on shared axes, one panel per metric: label -> metric -> {epoch: value}."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(keys), figsize=(4.4 * len(keys), 3.6))
    for ax, key in zip(axes, keys):
        for i, (label, history) in enumerate(histories.items()):
            series = history.get(key, {})
            if series:
                steps = sorted(series)
                ax.plot(steps, [series[s] for s in steps], marker="o", ms=3, color=COLORS[i % len(COLORS)],
                        label=label)
        ax.set_title(key)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    if any(ax.lines for ax in axes):
        axes[0].legend(fontsize=8)
    fig.tight_layout()
    return fig


def per_class(accuracies: Dict[str, float]):
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.4))
    names = list(accuracies)
    ax.barh(names[::-1], [accuracies[n] for n in names][::-1], color=COLORS[0])
    for i, n in enumerate(names[::-1]):
        ax.text(accuracies[n], i, f" {accuracies[n]:.3f}", va="center", fontsize=8)
    ax.set_xlim(0, 1.1)
    ax.set_xlabel("test accuracy")
    ax.set_title("per-class accuracy")
    fig.tight_layout()
    return fig


def _tile(w):
    """A filter (C x k x k) as an image in [0, 1]: RGB for 3 channels, else the channel mean in gray."""
    w = w.permute(1, 2, 0) if w.shape[0] == 3 else w.mean(0, keepdim=True).permute(1, 2, 0).repeat(1, 1, 3)
    low, high = w.min(), w.max()
    return ((w - low) / (high - low).clamp(min=1e-12)).numpy()


def mosaic(tiles: List[object], cols: int, size: int, gap: int = 2):
    """Square tiles (h x w x 3 uint8 arrays or tensors) scaled to `size` px without smoothing, in rows of `cols`,
    as one H x W x 3 uint8 array: one picture instead of a figure with an axes per tile."""
    import numpy as np
    from PIL import Image

    rows = math.ceil(len(tiles) / cols)
    out = np.full((rows * (size + gap) - gap, cols * (size + gap) - gap, 3), 255, dtype=np.uint8)
    for i, tile in enumerate(tiles):
        array = np.asarray(tile)
        scaled = np.asarray(Image.fromarray(array).resize((size, size), Image.NEAREST))
        r, c = divmod(i, cols)
        out[r * (size + gap):r * (size + gap) + size, c * (size + gap):c * (size + gap) + size] = scaled
    return out


def colour(values, cmap: str = "viridis"):
    """A 2-D map (tensor) in a colour map, scaled to its own range, as h x w x 3 uint8."""
    import matplotlib
    import numpy as np

    v = values.float()
    v = ((v - v.min()) / (v.max() - v.min()).clamp(min=1e-12)).numpy()
    return (matplotlib.colormaps[cmap](v)[..., :3] * 255).astype(np.uint8)


def filter_grid(weights, size: int = 36):
    """The first layer's filters, each scaled to its own range (as the lectures show them), 16 to a row."""
    import numpy as np

    tiles = [(_tile(w) * 255).astype(np.uint8) for w in weights]
    return mosaic(tiles, min(16, len(tiles)), size)


def kernel_matches(kernels: Dict[str, Sequence[Sequence[float]]], weights, found) -> "object":
    """Each hand-made kernel above the learned filter most like it (the filter's luminance, and in colour)."""
    import torch

    from .look import LUMA

    plt = pyplot()
    fig, axes = plt.subplots(3, len(found), figsize=(2.1 * len(found), 6.2), squeeze=False)
    for col, m in enumerate(found):
        kernel = torch.tensor(kernels[m.kernel], dtype=torch.float32)
        w = weights[m.filter]
        luma = (w * torch.tensor(LUMA).view(3, 1, 1)).sum(0) if w.shape[0] == 3 else w.mean(0)
        for row, (image, label, cmap) in enumerate((
                (kernel, m.kernel, "RdBu_r"), (luma * (1 if m.similarity >= 0 else -1),
                                               f"filter {m.filter}: {m.similarity:+.2f}", "RdBu_r"),
                (None, "in colour", None))):
            ax = axes[row][col]
            ax.axis("off")
            if image is None:
                ax.imshow(_tile(w), interpolation="nearest")
            else:
                top = float(image.abs().max()) or 1.0
                ax.imshow(image.numpy(), cmap=cmap, vmin=-top, vmax=top, interpolation="nearest")
            ax.set_title(label, fontsize=9)
    fig.tight_layout()
    return fig


def feature_maps(image, maps, channels: int = 8, size: int = 56):
    """One block's maps of one image (channels x h x w): the image, the mean of all channels, then its
    `channels` most active maps, each in its own range, as one strip."""
    strongest = maps.mean((1, 2)).argsort(descending=True)[:channels]
    return mosaic([image, colour(maps.mean(0)), *[colour(maps[i]) for i in strongest]], channels + 2, size)


def history_plot(points: List[Tuple[int, Optional[float], str]], metric: str, direction: str):
    """The objective of each trial in the order they started; pruned and failed trials in gray at their last
    value; the best so far as a step line."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.6))
    best, best_line = None, []
    for number, value, state in points:
        if value is not None and state == "FINISHED":
            best = value if best is None else (max if direction == "maximize" else min)(best, value)
        best_line.append(best)
    done = [(n, v) for n, v, s in points if s == "FINISHED" and v is not None]
    other = [(n, v) for n, v, s in points if s != "FINISHED" and v is not None]
    if other:
        ax.scatter(*zip(*other), color=GREY, marker="x", label="pruned / not finished")
    if done:
        ax.scatter(*zip(*done), color=COLORS[0], label="finished", zorder=3)
    xs = [n for n, _, _ in points]
    if any(b is not None for b in best_line):
        ax.step(xs, [float("nan") if b is None else b for b in best_line], where="post", color=COLORS[3],
                label="best so far")
    ax.set_xlabel("trial (in order of start)")
    ax.set_ylabel(metric)
    ax.set_title("optimisation history")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def trial_curves(curves: List[Tuple[str, Dict[int, float], str]], metric: str, best: Optional[str]):
    """Each trial's metric per epoch: finished trials in colour, pruned and others in gray, the best in bold."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.6))
    for label, series, state in curves:
        if not series:
            continue
        steps = sorted(series)
        finished = state == "FINISHED"
        ax.plot(steps, [series[s] for s in steps], color=COLORS[0] if finished else GREY,
                alpha=0.9 if label == best else (0.5 if finished else 0.6), lw=2.5 if label == best else 1,
                zorder=3 if label == best else (2 if finished else 1),
                marker="o" if len(steps) == 1 else None, ms=4)  # a one-epoch trial is a point, not an empty line
    ax.plot([], [], color=COLORS[0], label="finished")
    ax.plot([], [], color=GREY, label="pruned / not finished")
    if best:
        ax.plot([], [], color=COLORS[0], lw=2.5, label=f"best: {best}")
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} per epoch, every trial")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def config_bars(rows: List[Tuple[str, float, Optional[float], int]], metric: str):
    """Mean (with ± std error bars where a config has repeats) per configuration: (label, mean, std, n)."""
    plt = pyplot()
    rows = rows[:30]
    fig, ax = plt.subplots(figsize=(8, 0.32 * len(rows) + 1.2))
    labels = [textwrap.shorten(f"{label or 'base'}", 60, placeholder="…") + f"  (n={n})"
              for label, _, _, n in rows][::-1]
    means = [m for _, m, _, _ in rows][::-1]
    errors = [s or 0 for _, _, s, _ in rows][::-1]
    ax.barh(range(len(rows)), means, xerr=errors, color=COLORS[0], ecolor="black", capsize=3)
    ax.set_yticks(range(len(rows)), labels, fontsize=8)
    low = min(m - e for m, e in zip(means, errors))
    high = max(m + e for m, e in zip(means, errors))
    pad = (high - low) * 0.15 or 0.01
    ax.set_xlim(low - pad, high + pad)
    ax.set_xlabel(f"{metric}: mean ± std over seeds")
    ax.set_title("per configuration")
    ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    return fig


def pareto(points: List[Tuple[str, float, float, float]], metric: str):
    """Accuracy against parameter count and against FLOPs per image, (label, params, flops, accuracy); the
    Pareto front (no other run is both cheaper and more accurate) joined and labelled."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    for ax, index, name in ((axes[0], 1, "parameters"), (axes[1], 2, "FLOPs per image")):
        front = pareto_front([(p[index], p[3]) for p in points])
        ax.scatter([p[index] for p in points], [p[3] for p in points], color=GREY, label="runs")
        chosen = [points[i] for i in front]
        ax.plot([p[index] for p in chosen], [p[3] for p in chosen], "o-", color=COLORS[3], label="Pareto front")
        for p in chosen:
            ax.annotate(p[0], (p[index], p[3]), fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.set_xscale("log")
        ax.set_xlabel(name)
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"{metric} against cost")
    fig.tight_layout()
    return fig


def pareto_front(points: List[Tuple[float, float]]) -> List[int]:
    """Indices of the points no other point beats (costs no more and scores more, or costs less and scores
    no less), cheapest first."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], -math.inf
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front
