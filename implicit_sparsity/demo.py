"""The main job: the paper's whole story on a laptop, offline.

BasicNet is trained on Fashion-MNIST twice on the same budget, with Adam + L2 and with
SGD + L2 (the same lambda). Then, for each run: the layer-wise % of filters with
|gamma| < 1e-3, sparsity by activation over the training images, the dead filters removed
for real with the proof that test predictions did not change, and the measured speed-up.
Adam + L2 switches off far more filters than SGD + L2 and gets the larger speed-up.
Finished runs in the output folder are reused, interrupted ones resume.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from implicit_sparsity import defaults
from implicit_sparsity.measure.plots import plot_bn_history, plot_layer_sparsity, plot_universality
from implicit_sparsity.prune.cost import NOISE_NOTE, speedup_cell
from implicit_sparsity.study.evaluation import evaluate_trained_run
from implicit_sparsity.train import TrainConfig, ensure_trained, is_finished, load_bn_history


@dataclass(frozen=True)
class DemoSettings:
    """Chosen so that both runs finish within 10 minutes on 2 CPU cores."""

    width: str = "0.25"          # BasicNet at a quarter of the paper's widths
    train_subset: int = 30_000   # of Fashion-MNIST's 60,000 training images
    test_subset: int | None = None  # the whole 10,000-image test set
    epochs: tuple[int, ...] = (12, 3)  # base rate, then /10: the paper's schedule, shortened
    lam: float = 2e-3            # L2 strength, the same for both optimizers
    batch_size: int = 40         # the paper's
    seed: int = 0


FULL = DemoSettings()
#: A smoke-test version (seconds, not minutes): too short to show the effect reliably.
QUICK = DemoSettings(width="0.0625", train_subset=400, test_subset=200, epochs=(1, 1))

OPTIMIZERS = (("Adam + L2", "adam"), ("SGD + L2", "sgd"))


def demo_config(settings: DemoSettings, optimizer: str, data_dir: str | None) -> TrainConfig:
    return TrainConfig(model="basicnet", width=settings.width, dataset="fashion-mnist",
                       data_dir=data_dir, train_subset=settings.train_subset,
                       test_subset=settings.test_subset, optimizer=optimizer,
                       regularizer="l2", lam=settings.lam, batch_size=settings.batch_size,
                       epochs=list(settings.epochs), seed=settings.seed)


def layer_table(rows: list[tuple[str, dict]], threshold: float) -> str:
    """The layout of the paper's Table 2: % sparsity per layer, total, test error."""
    features = rows[0][1]["features"]
    lines = [f"% of conv filters with |gamma| < {threshold:g} per layer (filters in brackets):",
             f"{'':12s}" + "".join(f"{name:>7s}" for name in features)
             + f"{'Total':>8s}{'Test err':>10s}",
             f"{'':12s}" + "".join(f"{f'({n})':>7s}" for n in features.values())
             + f"{f'({sum(features.values())})':>8s}"]
    for label, metrics in rows:
        cells = "".join(f"{metrics['sparsity_gamma'][name]:7.0f}" for name in features)
        lines.append(f"{label:12s}{cells}{metrics['sparsity_gamma_total']:8.1f}"
                     f"{metrics['test_error']:9.1f}%")
    return "\n".join(lines)


def run_demo(out: Path = Path("runs/demo"), data_dir: str | None = None,
             quick: bool = False) -> list[tuple[str, dict]]:
    settings = QUICK if quick else FULL
    out = Path(out) / ("quick" if quick else "full")
    print(f"demo: BasicNet width {settings.width} on Fashion-MNIST "
          f"({settings.train_subset} training images, "
          f"{settings.test_subset or 'all'} test images), batch {settings.batch_size}, "
          f"epochs {list(settings.epochs)} (lr / 10 after {settings.epochs[0]}), "
          f"L2 lambda {settings.lam:g} for both optimizers, seed {settings.seed}")
    rows = []
    for label, optimizer in OPTIMIZERS:
        run = out / f"{optimizer}-l2"
        if is_finished(run):
            print(f"{label}: reusing the finished run in {run}")
        metrics = ensure_trained(demo_config(settings, optimizer, data_dir), run).metrics
        rows.append((label, metrics[-1]))
    print()
    print(layer_table(rows, defaults.GAMMA_THRESHOLD))
    print("\nmeasuring sparsity by activation over the training images, removing the dead "
          "filters, checking test predictions, timing both networks ...")
    outcomes = [measure_and_prune(out / f"{optimizer}-l2", label, data_dir, quick)
                for label, optimizer in OPTIMIZERS]
    print()
    print(outcome_table(outcomes))
    adam, sgd = rows[0][1]["sparsity_gamma_total"], rows[1][1]["sparsity_gamma_total"]
    print(f"\nAdam + L2 switched off {adam:.1f}% of the conv filters, SGD + L2 {sgd:.1f}% "
          f"(runs in {out}).")
    if adam > 2 * sgd + 5:
        print("As in the paper (Tables 1, 2): with L2, Adam switches off far more filters "
              "than SGD, mostly in the later layers, while SGD's sit in the early ones.")
    else:
        print("These runs do not show the paper's gap between Adam and SGD"
              + (" (--quick is far too short for it)." if quick else "."))
    print("figures:")
    for outcome in outcomes:
        for path in outcome["figures"]:
            print(f"  {path}")
    return rows


def measure_and_prune(run: Path, label: str, data_dir: str | None, quick: bool) -> dict:
    """Sparsity by activation, universality figures, real pruning with proof and timing."""

    result = evaluate_trained_run(run, data_dir, latency_batches=(64,),
                                  min_run_time=0.1 if quick else 0.5)
    figures = run / "figures"
    figures.mkdir(exist_ok=True)
    paths = [plot_layer_sparsity(result.report, figures / "layer_sparsity.png"),
             plot_universality(result.report, figures / "universality.png"),
             plot_bn_history(load_bn_history(run), figures / "gamma_beta_history.png",
                             title=f"γ and β over training: {label}")]
    return {"label": label, "gamma": result.percent("gamma"),
            "activation": result.percent("activation"), "pruned": result.pruned,
            "figures": paths}


def outcome_table(outcomes: list[dict]) -> str:
    lines = [f"{'':12s}{'by |gamma|':>11s}{'by act.':>9s}{'test err':>10s}{'pruned err':>12s}"
             f"{'conv params':>22s}{'MACs':>11s}{'speed-up':>10s}"]
    for o in outcomes:
        p = o["pruned"]
        e = p.equivalence
        params = f"{p.params['before']['conv']:,} -> {p.params['after']['conv']:,}"
        speedup = speedup_cell(p.latency[0] if p.latency else None)
        lines.append(f"{o['label']:12s}{o['gamma']:10.1f}%{o['activation']:8.1f}%"
                     f"{e.error_before:9.2f}%{e.error_after:11.2f}%{params:>22s}"
                     f"{p.mac_reduction:10.2f}x{speedup:>10s}")
    lines.append("(pruned err: the slim network on the same test set, predictions unchanged: "
                 f"{', '.join(str(o['pruned'].equivalence.changed_predictions) for o in outcomes)}"
                 f" changed; MACs and speed-up: original / slim, CPU, batch 64; {NOISE_NOTE})")
    return "\n".join(lines)
