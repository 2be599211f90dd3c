"""Implicit sparsity against the explicit methods, on the same model and data.

- implicit: train with the base config (Adam + L2 by default) at one or more mini-batch
  sizes (the paper's knob, same iterations), remove the dead filters exactly (proof).
- slimming: train with Network Slimming's L1 penalty on gamma, remove the `ratio` of
  filters with the smallest |gamma| (one global threshold), fine-tune.
- l1norm: train without a penalty, remove the filters with the smallest L1 norm per layer
  (given shares), fine-tune.

Fine-tuning follows each method's own paper (explicit.protocols), scaled to the run's
training, unless a spec fixes its epochs and rate. Every training is a run folder of ours
(resumable, reused when finished); every removal goes through `prune_model`. Each operating
point reports % filters removed, parameters, MACs, measured CPU speed-up at batch 64, test
error before and after removal and after fine-tuning, the fine-tuning protocol and the
training cost (seconds, epochs). With several seeds each arm runs once per seed, and
`summarize_arms` gives each arm's means and spreads, the error a user would keep (the
better of pruned and fine-tuned) and a flag where fine-tuning made it worse beyond the
seeds' spread (study.stats' rule).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from implicit_sparsity.errors import ConfigError
from implicit_sparsity.explicit.methods import (
    VGG16_A_FRACTIONS,
    l1_norm_selection,
    selectivity_selection,
    slimming_selection,
)
from implicit_sparsity.explicit.protocols import PROTOCOLS
from implicit_sparsity.io import atomic_write_text
from implicit_sparsity.io.outputs import save_figure
from implicit_sparsity.measure.features import trace_features
from implicit_sparsity.measure.plots import pyplot
from implicit_sparsity.prune import prune_model
from implicit_sparsity.prune.cost import NOISE_NOTE, speedup_cell
from implicit_sparsity.train.slim_io import save_slim
from implicit_sparsity.study.spec import find_spec
from implicit_sparsity.study.stats import HOLDS, Stat, compare as exceeds
from implicit_sparsity.train import TrainConfig, ensure_trained, load_config_file
from implicit_sparsity.train.restore import build_model_for, load_trained, load_training_data

METHODS = ("implicit", "slimming", "l1norm")
#: Also available, not run unless asked for: the least universal features of the implicit
#: arm's own run removed, then fine-tuned (explicit.methods.selectivity_selection).
EXTRA_METHODS = ("selectivity",)


@dataclass
class OperatingPoint:
    method: str
    setting: str
    filters_before: int
    filters_after: int
    conv_params_before: int
    conv_params_after: int
    macs_before: int
    macs_after: int
    speedup_batch64: float | None
    speedup_within_noise: bool
    error_before: float
    error_pruned: float
    error_finetuned: float | None
    train_seconds: float
    epochs: int
    finetune: str | None = None  # the fine-tuning protocol, in words
    seed: int | None = None
    arm: str | None = None       # the arm across seeds ("matched" for the matched share)

    @property
    def percent_pruned(self) -> float:
        return 100.0 * (1 - self.filters_after / self.filters_before)

    @property
    def final_error(self) -> float:
        return self.error_finetuned if self.error_finetuned is not None else self.error_pruned

    def to_dict(self) -> dict:
        return {**asdict(self), "percent_pruned": self.percent_pruned}

    @classmethod
    def from_dict(cls, data: dict) -> "OperatingPoint":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def _cost(metrics: list[dict]) -> tuple[float, int]:
    return sum(m["train_seconds"] for m in metrics), len(metrics)


def _point(method, setting, result, seconds, epochs, finetuned=None) -> OperatingPoint:
    e = result.equivalence
    return OperatingPoint(
        method, setting, sum(l.filters_before for l in result.layers),
        sum(l.filters_after for l in result.layers), result.params["before"]["conv"],
        result.params["after"]["conv"], result.macs["before"], result.macs["after"],
        result.latency[0]["speedup"] if result.latency else None,
        bool(result.latency and result.latency[0].get("within_noise")), e.error_before,
        e.error_after, finetuned, seconds, epochs)


#: A Network Slimming ratio that takes the share of filters the implicit arm removed: the
#: two methods compared at the same number of filters.
MATCHED = "matched"


def slimming_arms(ratios, implicit_share: float | None) -> list[tuple[float, str]]:
    """(ratio, label) of each arm by a share of all filters (Network Slimming, selectivity);
    MATCHED becomes the implicit arm's share, left out where that is 0 or already an arm."""
    arms = []
    for ratio in ratios:
        if ratio != MATCHED:
            arms.append((ratio, f"ratio {ratio:g}"))
            continue
        share = round(implicit_share or 0.0, 4)
        if share > 0.0 and share not in ratios:
            arms.append((share, f"{MATCHED} {share:g}"))  # the implicit arm's share
    return arms


def compare(base: TrainConfig, out: str | Path, *, methods=METHODS,
            implicit_batch_sizes: tuple[int, ...] = (), slimming_strength: float = 1e-4,
            slimming_ratios: tuple[float, ...] = (0.5,), l1_fractions: dict | None = None,
            explicit_optimizer: str = "sgd", finetune_epochs: tuple[int, ...] | None = None,
            finetune_lr: float | None = None, l1_label: str = "per-layer shares",
            selectivity_ratios: tuple = (MATCHED, 0.5), seeds: tuple[int, ...] | None = None,
            latency: bool = True, verbose: bool = False) -> list[OperatingPoint]:
    """Run every method on `base` (resolved, so the paper's defaults are explicit).
    `finetune_epochs` / `finetune_lr`: fixed fine-tuning for every explicit arm (None: each
    method's protocol, explicit.protocols). `seeds`: every arm once per seed, each seed in
    OUT/seed<N> (None: the base's seed, in OUT itself)."""
    base = base.resolved()
    check_choices(base, methods, slimming_ratios, l1_fractions)
    points = []
    for seed in seeds or (base.seed,):
        folder = Path(out) / f"seed{seed}" if seeds else Path(out)
        comparison = Comparison(dataclasses.replace(base, seed=seed), folder,
                                finetune_epochs, finetune_lr, (64,) if latency else (),
                                verbose)
        comparison.run(methods, implicit_batch_sizes, selectivity_ratios, explicit_optimizer,
                       slimming_strength, slimming_ratios, l1_fractions, l1_label)
        points += [dataclasses.replace(p, seed=seed) for p in comparison.points]
    atomic_write_text(Path(out) / "comparison.json",
                      json.dumps([p.to_dict() for p in points], indent=1))
    return points


@dataclass
class ArmSummary:
    """One arm over its seeds: means and spreads, the error a user would keep (the better
    of pruned and fine-tuned, by the means), and whether fine-tuning made it worse beyond
    the seeds' spread (study.stats' rule)."""

    method: str
    arm: str
    seeds: int
    percent_pruned: Stat
    error_before: Stat
    error_pruned: Stat
    error_finetuned: Stat | None
    finetune: str | None

    @property
    def finetune_hurt(self) -> bool:
        return self.error_finetuned is not None and exceeds(
            self.error_finetuned, self.error_pruned) == HOLDS

    @property
    def kept(self) -> tuple[str, Stat]:
        """("pruned" or "fine-tuned", its error): what a user would keep."""
        if self.error_finetuned is None or self.error_finetuned.mean > self.error_pruned.mean:
            return "pruned", self.error_pruned
        return "fine-tuned", self.error_finetuned

    def to_dict(self) -> dict:
        stats = {k: asdict(getattr(self, k)) if getattr(self, k) is not None else None
                 for k in ("percent_pruned", "error_before", "error_pruned",
                           "error_finetuned")}
        return {"method": self.method, "arm": self.arm, "seeds": self.seeds, **stats,
                "finetune": self.finetune, "finetune_hurt": self.finetune_hurt,
                "kept": self.kept[0]}


def summarize_arms(points: list[OperatingPoint]) -> list[ArmSummary]:
    """Each (method, arm) over its seeds, in the order they first appear."""
    groups: dict[tuple[str, str], list[OperatingPoint]] = {}
    for p in points:
        groups.setdefault((p.method, p.arm or p.setting), []).append(p)
    summaries = []
    for (method, arm), group in groups.items():
        tuned = [p.error_finetuned for p in group if p.error_finetuned is not None]
        summaries.append(ArmSummary(
            method, arm, len(group), Stat.of([p.percent_pruned for p in group]),
            Stat.of([p.error_before for p in group]), Stat.of([p.error_pruned for p in group]),
            Stat.of(tuned) if tuned else None, group[0].finetune))
    return summaries


def arms_table(summaries: list[ArmSummary]) -> str:
    """Per arm: % removed, error before / pruned / fine-tuned (mean ± std over seeds), the
    one kept, and a flag where fine-tuning made it worse beyond the spread."""
    lines = [f"{'method':12s}{'arm':>18s}{'seeds':>6s}{'% pruned':>13s}{'err':>13s}"
             f"{'pruned':>13s}{'fine-tuned':>13s}  kept"]
    for a in summaries:
        flag = "  <- fine-tuning made it worse beyond the seeds' spread" if a.finetune_hurt \
            else ""
        lines.append(f"{a.method:12s}{a.arm:>18s}{a.seeds:6d}{str(a.percent_pruned):>13s}"
                     f"{str(a.error_before):>13s}{str(a.error_pruned):>13s}"
                     f"{str(a.error_finetuned) if a.error_finetuned else '-':>13s}  "
                     f"{a.kept[0] if a.error_finetuned else '-'}{flag}")
    protocols = {a.method: a.finetune for a in summaries if a.finetune}
    lines += [f"fine-tuning, {method}: {text}" for method, text in protocols.items()]
    return "\n".join(lines)


def check_choices(base: TrainConfig, methods, slimming_ratios, l1_fractions) -> None:
    """Every choice checked before the first training."""
    unknown = sorted(set(methods) - set(METHODS + EXTRA_METHODS))
    if unknown:
        raise ConfigError(f"unknown method(s) {', '.join(unknown)}; valid: "
                          f"{', '.join(METHODS + EXTRA_METHODS)}")
    if "selectivity" in methods and "implicit" not in methods:
        raise ConfigError("the selectivity arm prunes the implicit arm's run: add 'implicit'")
    for ratio in slimming_ratios:
        if ratio == MATCHED:
            if "implicit" not in methods:
                raise ConfigError("a Network Slimming ratio 'matched' needs the implicit arm")
            continue
        if not 0.0 <= ratio < 1.0:
            raise ConfigError(f"Network Slimming ratio must be in [0, 1), got {ratio:g}")
    if "l1norm" in methods and l1_fractions:
        l1_norm_selection(build_model_for(base), l1_fractions)  # unknown layers, bad shares


class Comparison:
    """The arms of one comparison, each trained (or reused) in its folder under `out`, and
    the operating points they give."""

    def __init__(self, base: TrainConfig, out: Path, finetune_epochs, finetune_lr,
                 latency_batches: tuple[int, ...], verbose: bool):
        self.base, self.out = base, out
        self.finetune_epochs, self.finetune_lr = finetune_epochs, finetune_lr
        self.latency_batches, self.verbose = latency_batches, verbose
        self.points: list[OperatingPoint] = []

    def run(self, methods, implicit_batch_sizes, selectivity_ratios, explicit_optimizer,
            slimming_strength, slimming_ratios, l1_fractions, l1_label) -> None:
        base = self.base
        if "implicit" in methods:
            self.implicit(implicit_batch_sizes or (base.batch_size,))
        if "selectivity" in methods:
            self.selectivity(selectivity_ratios)
        explicit_base = dataclasses.replace(
            base, optimizer=explicit_optimizer, lr=None, optimizer_args={}).resolved()
        if "slimming" in methods:
            self.slimming(explicit_base, slimming_strength, slimming_ratios)
        if "l1norm" in methods:
            self.l1norm(explicit_base, l1_fractions, l1_label)

    def train(self, config: TrainConfig, folder: Path):
        return ensure_trained(config, folder, verbose=self.verbose)

    def prune(self, run, select=None):
        """Remove filters from the run's model: its dead ones, or those `select` picks."""
        trained = load_trained(run.run_dir)
        data = load_training_data(trained, "cpu", self.base.data_dir)
        example = next(iter(data.test_batches(64)))[0]
        selection = select(trained.model) if select else None
        result = prune_model(trained.model, example, selection=selection,
                             check_data=list(data.test_batches(500)),
                             latency_batches=self.latency_batches, min_run_time=0.2)
        return trained, result, example

    def fine_tune(self, method: str, trained, result, example, folder: Path, seconds,
                  epochs):
        """Fine-tune the pruned model: by the method's protocol, or the fixed epochs and
        rate the comparison was given. Returns (test error, seconds, epochs, protocol)."""
        files = save_slim(result, folder / "slim", example, config=trained.config.to_dict(),
                          force=True, extra={"note": "explicit pruning: predictions change "
                                             "until fine-tuned"})
        trained_epochs = sum(trained.config.epochs)
        if self.finetune_epochs is None:
            protocol = PROTOCOLS[method]
            stages, lr = protocol.epochs(trained_epochs), protocol.lr_factor * trained.config.lr
            described = protocol.describe(trained_epochs, trained.config.lr)
        else:
            stages, lr = list(self.finetune_epochs), self.finetune_lr or trained.config.lr
            described = f"{sum(stages)} epochs at lr {lr:g} (fixed by the comparison)"
        config = dataclasses.replace(trained.config, init_from=str(files["slim"]),
                                     epochs=stages, l1_gamma=0.0, lr=lr)
        tuned = self.train(config, folder / "finetune")
        more_seconds, more_epochs = _cost(tuned.metrics)
        return (tuned.metrics[-1]["test_error"], seconds + more_seconds,
                epochs + more_epochs, described)

    def ratio_arms(self, method: str, run, ratios, select) -> None:
        """One fine-tuned point per share of all filters that `select(model, ratio)` picks
        from `run` ("matched": the implicit arm's share)."""
        implicit = [p.percent_pruned / 100 for p in self.points if p.method == "implicit"]
        for ratio, label in slimming_arms(ratios, implicit[0] if implicit else None):
            trained, result, example = self.prune(
                run, lambda model, ratio=ratio: select(model, ratio))
            error, seconds, epochs, protocol = self.fine_tune(
                method, trained, result, example, self.out / method / f"ratio{ratio:g}",
                *_cost(run.metrics))
            self.points.append(dataclasses.replace(
                _point(method, label, result, seconds, epochs), error_finetuned=error,
                finetune=protocol, arm=MATCHED if label.startswith(MATCHED) else label))

    # --- the arms ------------------------------------------------------------------------
    def implicit(self, batch_sizes) -> None:
        base = self.base
        for batch in batch_sizes:
            config = dataclasses.replace(base, batch_size=batch, epochs=[
                max(1, round(e * batch / base.batch_size)) if e else 0 for e in base.epochs])
            run = self.train(config, self.out / "implicit" / f"batch{batch}")
            _, result, _ = self.prune(run)
            self.points.append(dataclasses.replace(
                _point("implicit", f"batch {batch}", result, *_cost(run.metrics)),
                arm=f"batch {batch}"))

    def selectivity(self, ratios) -> None:
        """The implicit arm's own run, its least universal filters removed."""
        base = self.base
        run = self.train(base, self.out / "implicit" / f"batch{base.batch_size}")
        corpus_of = {}

        def least_universal(model, ratio):
            if "data" not in corpus_of:
                corpus_of["data"] = load_training_data(load_trained(run.run_dir), "cpu",
                                                       base.data_dir)
            data = corpus_of["data"]
            return selectivity_selection(model, lambda: data.train_eval_batches(500), ratio)
        self.ratio_arms("selectivity", run, ratios, least_universal)

    def slimming(self, explicit_base: TrainConfig, strength: float, ratios) -> None:
        config = dataclasses.replace(explicit_base, l1_gamma=strength)
        run = self.train(config, self.out / "slimming" / "train")
        self.ratio_arms("slimming", run, ratios, slimming_selection)

    def l1norm(self, explicit_base: TrainConfig, fractions: dict | None, label: str) -> None:
        run = self.train(explicit_base, self.out / "l1norm" / "train")

        def select(model):
            return l1_norm_selection(model, fractions or {name: 0.5
                                                          for name in _layer_names(model)})
        trained, result, example = self.prune(run, select)
        error, seconds, epochs, protocol = self.fine_tune(
            "l1norm", trained, result, example, self.out / "l1norm" / "pruned",
            *_cost(run.metrics))
        self.points.append(dataclasses.replace(_point("l1norm", label, result, seconds, epochs),
                                               error_finetuned=error, finetune=protocol,
                                               arm=label))


def _layer_names(model) -> list[str]:

    return [f.name for f in trace_features(model).features]


#: Keys of a comparison spec (experiments/compare_*.yaml).
COMPARISON_KEYS = {"name", "title", "paper_ref", "notes", "base", "quick", "implicit",
                   "slimming", "l1norm", "paper"}


def load_comparison(name_or_path: str, quick: bool = False, overrides: dict | None = None
                    ) -> tuple[dict, TrainConfig, dict]:
    """(spec, base config, keyword arguments of `compare`) from a comparison spec;
    `overrides` (a stand-in data set, a data_dir) apply to the base config last."""

    spec = load_config_file(find_spec(name_or_path))
    unknown = sorted(set(spec) - COMPARISON_KEYS)
    if unknown:
        raise ConfigError(f"comparison spec: unknown key(s) {', '.join(unknown)}")
    scale = dict(spec.get("quick") or {}) if quick else {}
    finetune = scale.pop("finetune_epochs", None)
    base = TrainConfig.from_dict({**spec["base"], **scale, **(overrides or {})}).resolved()
    implicit, slimming = spec.get("implicit"), spec.get("slimming")
    l1norm = spec.get("l1norm")
    methods = tuple(m for m, section in (("implicit", implicit), ("slimming", slimming),
                                         ("l1norm", l1norm)) if section is not None)
    fractions = (l1norm or {}).get("fractions")
    kwargs = {
        "methods": methods,
        "implicit_batch_sizes": tuple((implicit or {}).get("batch_sizes", ())),
        "slimming_strength": float((slimming or {}).get("strength", 1e-4)),
        "slimming_ratios": tuple(r if r == MATCHED else float(r)
                                 for r in (slimming or {}).get("ratios", [0.5])),
        "l1_fractions": VGG16_A_FRACTIONS if fractions == "vgg16-a" else fractions,
        "explicit_optimizer": (slimming or l1norm or {}).get("optimizer", "sgd"),
        # the spec's fixed fine-tuning is for its full scale; --quick scales each method's
        # protocol to its shorter training unless its quick block fixes the epochs
        "finetune_epochs": _fixed_epochs(finetune if quick else (slimming or l1norm or {})
                                         .get("finetune_epochs")),
        "finetune_lr": None if quick else (slimming or l1norm or {}).get("finetune_lr"),
        "l1_label": "VGG-16-A" if fractions == "vgg16-a" else "per-layer shares",
    }
    return spec, base, kwargs


def _fixed_epochs(value) -> tuple[int, ...] | None:
    """A spec's fixed fine-tuning epochs, or None (each method's protocol)."""
    return None if value is None else tuple(value)


def comparison_table(points: list[OperatingPoint], paper: list[dict] | None = None) -> str:
    """Our operating points; with `paper`, the paper's % removed and error beside them."""
    reported = {(e["method"], e["setting"]): e for e in paper or []}
    lines = [f"{'method':10s}{'setting':>18s}{'% pruned':>10s}{'conv params':>24s}"
             f"{'MACs':>8s}{'speed-up':>10s}{'err':>7s}{'pruned':>8s}{'tuned':>7s}"
             f"{'train s':>9s}{'epochs':>8s}" + ("  paper: % pruned, err" if paper else "")]
    for p in points:
        params = f"{p.conv_params_before:,} -> {p.conv_params_after:,}"
        macs = p.macs_before / max(1, p.macs_after)
        lost = p.filters_after < p.filters_before  # no filter lost: no speed-up to speak of
        speed = (speedup_cell({"speedup": p.speedup_batch64,
                               "within_noise": p.speedup_within_noise})
                 if p.speedup_batch64 and lost else "-")
        tuned = f"{p.error_finetuned:.1f}" if p.error_finetuned is not None else "-"
        theirs = reported.get((p.method, p.setting))
        beside = (f"  {theirs.get('percent_pruned', '-')}, {theirs.get('error', '-')}"
                  + (f" (before pruning {theirs['error_before']})"
                     if "error_before" in theirs else "") if theirs else "")
        lines.append(f"{p.method:10s}{p.setting:>18s}{p.percent_pruned:10.1f}{params:>24s}"
                     f"{macs:7.2f}x{speed:>10s}{p.error_before:7.1f}{p.error_pruned:8.1f}"
                     f"{tuned:>7s}{p.train_seconds:9.0f}{p.epochs:8d}{beside}")
    shown = {(p.method, p.setting) for p in points}
    for (method, setting), theirs in reported.items():
        if (method, setting) not in shown:  # the paper's own baselines (not rerun here)
            lines.append(f"{method:10s}{setting:>18s}{'':>96s}  "
                         f"{theirs.get('percent_pruned', '-')}, {theirs.get('error', '-')}"
                         + (f" (before pruning {theirs['error_before']})"
                            if "error_before" in theirs else ""))
    if any(p.speedup_batch64 for p in points):
        lines.append(f"(speed-up: original / slim, CPU, batch 64; {NOISE_NOTE})")
    return "\n".join(lines)


def plot_tradeoff(points: list[OperatingPoint], path: Path, paper: list[dict] | None = None
                  ) -> Path:
    """Test error against % filters removed, per arm (means over seeds, error bars for
    their spread): the implicit arms as they are; each explicit arm twice, pruned (hollow)
    and fine-tuned (filled), joined by a dotted line; the paper's points as grey squares."""

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.6, 3.8))
    summaries = summarize_arms(points)
    for i, method in enumerate(dict.fromkeys(a.method for a in summaries)):
        color = f"C{i}"
        for n, a in enumerate(a for a in summaries if a.method == method):
            x, pruned = a.percent_pruned.mean, a.error_pruned
            label = method if n == 0 else None
            if a.error_finetuned is None:
                ax.errorbar(x, pruned.mean, yerr=pruned.std or None, fmt="o", color=color,
                            label=label)
            else:
                tuned = a.error_finetuned
                ax.plot([x, x], [pruned.mean, tuned.mean], ":", color=color, lw=1)
                ax.errorbar(x, pruned.mean, yerr=pruned.std or None, fmt="o", mfc="none",
                            color=color)
                ax.errorbar(x, tuned.mean, yerr=tuned.std or None, fmt="o", color=color,
                            label=label)
            ax.annotate(a.arm + (" (fine-tuning hurt)" if a.finetune_hurt else ""),
                        (x, a.kept[1].mean), fontsize=6, xytext=(3, 3),
                        textcoords="offset points", clip_on=False)
    for entry in paper or []:  # the paper's operating points, hollow
        if "percent_pruned" in entry and "error" in entry:
            ax.plot(entry["percent_pruned"], entry["error"], "s", mfc="none", color="0.4")
            ax.annotate(f"paper: {entry.get('method')} {entry.get('setting', '')}",
                        (entry["percent_pruned"], entry["error"]), fontsize=5,
                        xytext=(3, -8), textcoords="offset points", color="0.4")
    ax.set_xlabel("% conv filters removed")
    ax.set_ylabel("test error (%): hollow pruned, filled fine-tuned")
    ax.margins(x=0.15, y=0.15)
    ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path, dpi=120)
    plt.close(fig)
    return Path(path)
