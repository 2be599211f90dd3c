"""A sweep's figures, as the paper draws them, in PNG and PDF:

- layer_sparsity: % of filters with |gamma| < 1e-3 per layer, one bar group per table row
  and column (the paper's Tables 2 / 7 as a picture), mean over seeds;
- universality: per table row, the fraction of features at each level of universality, per
  layer (Fig. 3 / 5), from the first seed's run;
- gamma_beta_<row>: gamma and beta of every layer over the epochs (Fig. 2), first seed.
"""

from __future__ import annotations

import statistics
import textwrap
from pathlib import Path

from implicit_sparsity.io import atomic_write_text
from implicit_sparsity.io.outputs import save_figure
from implicit_sparsity.io.run_dir import load_bn_history
from implicit_sparsity.measure.plots import plot_bn_history, pyplot


def _label(record: dict, keys: list[str]) -> str:
    return ", ".join(f"{k}={record.get(k)}" for k in keys)


def _save(fig, folder: Path, stem: str) -> list[Path]:
    paths = []
    for suffix in ("png", "pdf"):
        path = folder / f"{stem}.{suffix}"
        save_figure(fig, path, dpi=120)
        paths.append(path)
    return paths


def write_figures(sweep_dir: str | Path, spec: dict, records: list[dict],
                  folder: str | Path) -> list[Path]:
    """The sweep's figures (PNG and PDF): layer-wise |gamma| sparsity per table row,
    universality histograms, and gamma / beta over training per row (its first seed)."""
    plt = pyplot()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    table = spec.get("table") or {}
    keys = table.get("rows", []) + table.get("columns", [])
    groups: dict[str, list[dict]] = {}
    for record in records:
        groups.setdefault(_label(record, keys), []).append(record)
    if not groups:
        return []
    layers = list(next(iter(groups.values()))[0]["layers"])
    firsts = {label: min(members, key=lambda m: m["seed"]) for label, members in groups.items()}
    written = _layer_bars(plt, groups, layers, folder)
    if all(r["layers"][layers[0]].get("universality_histogram") for r in firsts.values()):
        written += _universality_grid(plt, firsts, layers, folder)
    return written + _bn_histories(Path(sweep_dir), firsts, folder)


def _layer_bars(plt, groups: dict[str, list[dict]], layers: list[str], folder: Path
                ) -> list[Path]:
    """Layer-wise sparsity by |gamma|, mean over seeds, one bar colour per table row."""
    fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(layers) * max(1, len(groups) / 3)), 3.8))
    width = 0.8 / len(groups)
    for i, (label, members) in enumerate(groups.items()):
        values = [statistics.fmean(m["layers"][name]["sparsity_gamma"] or 0 for m in members)
                  for name in layers]
        ax.bar([x + i * width for x in range(len(layers))], values, width, label=label,
               color=plt.cm.tab20(i % 20))  # distinct colours for up to 20 table rows
    ax.set_xticks([x + width * (len(groups) - 1) / 2 for x in range(len(layers))])
    ax.set_xticklabels(layers)
    ax.set_ylabel("% filters with |gamma| < 1e-3")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=7)
    fig.tight_layout()
    written = _save(fig, folder, "layer_sparsity")
    plt.close(fig)
    return written


def _universality_grid(plt, firsts: dict[str, dict], layers: list[str], folder: Path
                       ) -> list[Path]:
    """Universality histograms: the table's rows x the layers."""
    fig, axes = plt.subplots(len(firsts), len(layers), squeeze=False,
                             figsize=(1.9 * len(layers) + 1.2, max(2.6, 1.7 * len(firsts))))
    for row, (label, record) in enumerate(firsts.items()):
        for col, name in enumerate(layers):
            hist = record["layers"][name]["universality_histogram"]
            total = max(1, record["layers"][name]["features"])
            ax = axes[row][col]
            ax.bar(hist["edges"][:-1], [c / total for c in hist["counts"]], width=9,
                   align="edge")
            ax.set_xlim(0, 100)
            ax.tick_params(labelsize=6)
            if row == 0:
                ax.set_title(name, fontsize=8)
            if col == 0:  # the row's label beside it, wrapped, never cut off
                ax.set_ylabel(textwrap.fill(str(label), 18), fontsize=6, rotation=0,
                              ha="right", va="center")
    fig.supxlabel("universality (%)", fontsize=8)
    fig.supylabel("fraction of features", fontsize=8)
    fig.tight_layout()
    written = _save(fig, folder, "universality")
    plt.close(fig)
    return written


def _bn_histories(sweep_dir: Path, firsts: dict[str, dict], folder: Path) -> list[Path]:
    """gamma / beta over training, one figure per table row (its first seed), and an
    index.txt naming the row of each."""
    written = []
    for i, (label, record) in enumerate(firsts.items()):
        history = load_bn_history(sweep_dir / "runs" / record["key"])
        if history:
            stem = f"gamma_beta_{i + 1}"
            title = f"γ and β over training: {label} (seed {record['seed']})"
            written += [plot_bn_history(history, folder / f"{stem}.png", title=title),
                        plot_bn_history(history, folder / f"{stem}.pdf", title=title)]
    atomic_write_text(folder / "index.txt", "".join(
        f"gamma_beta_{i + 1}: {label}\n" for i, label in enumerate(firsts)))
    return written
