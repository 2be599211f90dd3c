"""The findings report: a row per finding (claim, the paper's evidence, ours, verdict) in
Markdown and in HTML with the figures inline, so it reads in a browser or a paper draft."""

from __future__ import annotations

import base64
import html
import statistics
from pathlib import Path

from implicit_sparsity.explicit.compare import arms_table, plot_tradeoff, summarize_arms
from implicit_sparsity.findings.claims import EARLY_LAYERS, LATE_LAYERS, MIN_EFFECT, NEAR_ZERO
from implicit_sparsity.io import atomic_write_text
from implicit_sparsity.io.outputs import save_figure
from implicit_sparsity.io.run_dir import load_bn_history
from implicit_sparsity.measure.plots import plot_bn_history, pyplot
from implicit_sparsity.study.simulate import plot_simulation

RULE = (f"A claim \"A > B\" holds when the difference of the means exceeds both the seeds' "
        f"spread (root of the summed variances) and {MIN_EFFECT:g} percentage point; it does "
        "not hold when it is that large the other way; otherwise it is inconclusive. A claim "
        "of several parts holds when every part holds. \"(Almost) no sparsity\" is at most "
        f"{NEAR_ZERO:g}%. Sparsity is the % of conv filters with |γ| < 1e-3; layers "
        f"{'-'.join((EARLY_LAYERS[0], EARLY_LAYERS[-1]))} are early, "
        f"{'-'.join((LATE_LAYERS[0], LATE_LAYERS[-1]))} late.")


def _figures(out: Path, context) -> list[tuple[str, Path]]:
    """Layer-wise sparsity (Adam vs SGD), the reference's γ / β over epochs, the simulation,
    the implicit / explicit trade-off: those whose data exist."""

    folder = out / "figures"
    folder.mkdir(parents=True, exist_ok=True)
    figures = []
    plt = pyplot()
    roles = [r for r in ("adam-l2", "sgd-l2") if context.runs.get(r)]
    if roles:
        layers = list((context.runs[roles[0]][0].get("layers") or {}).keys())
        fig, ax = plt.subplots(figsize=(6, 3.2))
        width = 0.8 / len(roles)
        for i, role in enumerate(roles):
            means = [statistics.fmean(r["layers"][name]["sparsity_gamma"]
                                      for r in context.runs[role]) for name in layers]
            ax.bar([j + i * width for j in range(len(layers))], means, width, label=role)
        ax.set_xticks([j + width * (len(roles) - 1) / 2 for j in range(len(layers))])
        ax.set_xticklabels(layers)
        ax.set_ylabel("% filters with |γ| < 1e-3")
        ax.set_ylim(0, 100)
        ax.set_title("Sparsity per layer (finding 4), mean over seeds", fontsize=9)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = folder / "layers.png"
        save_figure(fig, path, dpi=120)
        plt.close(fig)
        figures.append(("Sparsity per layer: Adam + L2 against SGD + L2", path))
        history = load_bn_history(Path(context.runs["adam-l2"][0]["run_dir"])) \
            if context.runs.get("adam-l2") else {}
        if history:
            path = plot_bn_history(history, folder / "gamma_beta.png",
                                   title="Adam + L2 (the reference run), first seed")
            figures.append(("γ and β of each layer over the epochs (Adam + L2, first seed)",
                            path))
    if context.simulation is not None:
        path = folder / "simulation.png"
        plot_simulation(context.simulation, path)
        figures.append(("The low-gradient simulation (finding 9)", path))
    if context.comparison:

        path = plot_tradeoff(context.comparison, folder / "tradeoff.png")
        figures.append(("Implicit against explicit pruning (finding 11)", path))
    return figures


def write_report(out: Path, scale, outcomes, context, wall_seconds: float) -> dict[str, Path]:
    figures = _figures(out, context)
    counts = {v: sum(o.verdict == v for _, o in outcomes)
              for v in ("holds", "does not hold", "inconclusive")}
    title = f"The paper's findings, re-checked ({scale.name} scale)"
    summary = (f"Ours: {scale.description}. The paper's: BasicNet / VGG on CIFAR-10/100, "
               f"ImageNet and the rest of its settings, 3 runs averaged. This invocation took "
               f"{wall_seconds / 60:.1f} min (runs already done are reused). "
               f"Verdicts: {counts['holds']} hold, "
               f"{counts['does not hold']} do not hold, {counts['inconclusive']} "
               "inconclusive.")
    lines = [f"# {title}", "", summary, "", f"Rule: {RULE}", "",
             "| # | claim | the paper | ours | verdict |", "|---|---|---|---|---|"]
    for finding, outcome in outcomes:
        cells = [str(finding.number), finding.claim, finding.evidence, outcome.ours,
                 f"**{outcome.verdict}**"]
        lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    lines.append("")
    caveats = [f"Finding {n}: {text}" for n, text in sorted(scale.caveats.items())]
    lines += [f"**What this scale cannot show.** {c}" for c in caveats]
    lines += [""] if caveats else []
    if context.comparison:  # finding 11's arms: both errors, the protocol, the flags
        lines += ["**Implicit against explicit pruning (finding 11)**: per arm over the seeds, "
                  "error before pruning, after pruning and after fine-tuning (each method's "
                  "own protocol, scaled to this training), and the one a user would keep.",
                  "", "```", arms_table(summarize_arms(context.comparison)), "```", ""]
    for caption, path in figures:
        lines += [f"![{caption}]({path.relative_to(out)})", "", f"*{caption}*", ""]
    markdown = out / "report.md"

    atomic_write_text(markdown, "\n".join(lines) + "\n")
    rows = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in (
            str(f.number), f.claim, f.evidence, o.ours))
        + f"<td class='{o.verdict.replace(' ', '-')}'>{html.escape(o.verdict)}</td></tr>"
        for f, o in outcomes)
    images = "".join(
        f"<figure><img src='data:image/png;base64,"
        f"{base64.b64encode(path.read_bytes()).decode()}' alt='{html.escape(caption)}'>"
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
        for caption, path in figures)
    notes = "".join(f"<p><b>What this scale cannot show.</b> {html.escape(c)}</p>"
                    for c in caveats)
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 8px;vertical-align:top}}
.holds{{background:#dfd}}.does-not-hold{{background:#fdd}}.inconclusive{{background:#ffd}}
img{{max-width:100%}}</style></head><body>
<h1>{html.escape(title)}</h1><p>{html.escape(summary)}</p><p>Rule: {html.escape(RULE)}</p>
<table><tr><th>#</th><th>claim</th><th>the paper</th><th>ours</th><th>verdict</th></tr>
{rows}</table>{notes}{images}</body></html>
"""
    page_path = out / "report.html"
    atomic_write_text(page_path, page)
    return {"markdown": markdown, "html": page_path}
