"""Figures: layer-wise sparsity bars, universality histograms (Fig. 3 / 5), gamma and beta
over training (Fig. 2). matplotlib is an optional extra (`pip install .[plot]`)."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from implicit_sparsity.errors import ImplicitSparsityError
from implicit_sparsity.io.outputs import save_figure


def pyplot():
    try:
        import matplotlib
    except ImportError:
        raise ImplicitSparsityError("plots need matplotlib: pip install 'implicit-sparsity[plot]'"
                                    ) from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_layer_sparsity(report, path: Path) -> Path:
    """% inactive features per conv layer, by |gamma| and by activation, side by side."""
    plt = pyplot()
    names = [l.name for l in report.layers]
    fig, ax = plt.subplots(figsize=(max(6, 0.5 * len(names) + 2), 3.5))
    series = [("gamma", "by |gamma|"), ("activation", "by activation")]
    series = [(c, label) for c, label in series if report.total(c) is not None]
    width = 0.8 / max(1, len(series))
    for i, (criterion, label) in enumerate(series):
        values = [l.percent(getattr(l, f"inactive_{criterion}")) or 0 for l in report.layers]
        ax.bar([x + i * width for x in range(len(names))], values, width, label=label)
    ax.set_xticks([x + width * (len(series) - 1) / 2 for x in range(len(names))])
    ax.set_xticklabels([f"{l.name}\n({l.features})" for l in report.layers],
                       rotation=0 if len(names) <= 16 else 90, fontsize=8)
    ax.set_ylabel("% inactive features")
    ax.set_ylim(0, 100)
    ax.legend()
    fig.tight_layout()
    save_figure(fig, path, dpi=120)
    plt.close(fig)
    return Path(path)


def plot_universality(report, path: Path) -> Path:
    """Per layer: fraction of features at each level of universality (paper's Fig. 3)."""
    plt = pyplot()
    layers = [l for l in report.layers if l.universality is not None]
    if not layers:
        raise ImplicitSparsityError("no universality was measured (needs --criterion "
                                    "activation or both)")
    cols = min(4, len(layers))
    rows = math.ceil(len(layers) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.4 * rows), squeeze=False)
    for ax, layer in zip(axes.flat, layers):
        hist = layer.universality_histogram()
        fractions = [c / layer.features for c in hist["counts"]]
        ax.bar(hist["edges"][:-1], fractions, width=9, align="edge")
        ax.set_title(f"{layer.name} ({layer.features}), {hist['zero']} at 0%", fontsize=9)
        ax.set_xlim(0, 100)
        ax.set_xlabel("universality (%)", fontsize=8)
        ax.set_ylabel("fraction of features", fontsize=8)
    for ax in list(axes.flat)[len(layers):]:
        ax.axis("off")
    fig.tight_layout()
    save_figure(fig, path, dpi=120)
    plt.close(fig)
    return Path(path)


def plot_bn_history(history: dict[str, dict[str, torch.Tensor]], path: Path,
                    layers: list[str] | None = None, title: str | None = None) -> Path:
    """gamma (top) and beta (bottom) of each layer over epochs: median and 5-95 / 25-75
    percentile bands, as the evolving distributions of the paper's Fig. 2. `title` names
    the run."""
    plt = pyplot()
    names = layers or [n for n in history if not n.startswith("classifier")] or list(history)
    fig, axes = plt.subplots(2, len(names), figsize=(2.6 * len(names), 4.6), squeeze=False,
                             sharex=True)
    for col, name in enumerate(names):
        epochs = history[name]["epochs"].numpy()
        for row, key in enumerate(("gamma", "beta")):
            values = history[name][key]
            q = torch.quantile(values, torch.tensor([0.05, 0.25, 0.5, 0.75, 0.95]), dim=1)
            ax = axes[row][col]
            ax.fill_between(epochs, q[0], q[4], alpha=0.2, color="C0")
            ax.fill_between(epochs, q[1], q[3], alpha=0.4, color="C0")
            ax.plot(epochs, q[2], color="C0")
            ax.axhline(0, color="k", lw=0.5)
            ax.set_title(f"{name} {key}", fontsize=9)
            if row == 1:
                ax.set_xlabel("epoch", fontsize=8)
            if col == 0:
                ax.set_ylabel("γ" if key == "gamma" else "β", fontsize=9)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    save_figure(fig, path, dpi=120)
    plt.close(fig)
    return Path(path)
