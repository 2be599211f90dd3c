"""Experiment specs: one YAML file per table or figure of the paper.

    name: table1
    title: ...
    base: {model: basicnet, epochs: [250, 75]}      # TrainConfig keys shared by every run
    grid: {dataset: [cifar10, cifar100]}            # a cartesian product over these keys
    variants:                                       # one entry per row of the table
      - {optimizer: sgd, regularizer: l2, lam: 2e-3}
    seeds: [0, 1, 2]                                # the paper averages 3 runs
    quick: {train_subset: 2000, epochs: [4, 1], width: "0.25", seeds: [0]}
    table: {rows: [optimizer, regularizer, lam], columns: [dataset],
            values: [sparsity_activation, sparsity_gamma, test_error]}
    paper:                                          # the paper's numbers, for comparison
      - {optimizer: sgd, regularizer: l2, lam: 2e-3, dataset: cifar10,
         sparsity_activation: 54, sparsity_gamma: 54, test_error: 30.9}

A run's config is the base, then the quick scale-down (with --quick), then its grid and
variant keys (a variant's own keys hold at both scales: a recipe's lambda, say), then the
command line's overrides. Every run is keyed by a hash of its resolved config, so a sweep
knows what it already has.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from implicit_sparsity import defaults
from implicit_sparsity.errors import ConfigError
from implicit_sparsity.train.config import TrainConfig, key_fields, load_config_file

#: Where specs are looked up by name (a path works too).
SPEC_DIR = Path(__file__).resolve().parents[2] / "experiments"
SPEC_KEYS = {"name", "title", "paper_ref", "base", "grid", "variants", "seeds", "quick",
             "table", "paper", "notes", "slurm", "claims"}
TABLE_KEYS = ("rows", "columns", "values")


@dataclass
class PlannedRun:
    key: str                 # hash of the resolved config's result fields
    labels: dict             # the grid / variant values that identify it in the table
    seed: int
    config: TrainConfig      # resolved


@dataclass
class ExperimentSpec:
    name: str
    title: str = ""
    paper_ref: str = ""
    base: dict = field(default_factory=dict)
    grid: dict = field(default_factory=dict)
    variants: list = field(default_factory=lambda: [{}])
    seeds: list = field(default_factory=lambda: [0])
    quick: dict = field(default_factory=dict)
    table: dict = field(default_factory=dict)
    paper: list = field(default_factory=list)
    notes: str = ""
    #: claims tested on the sweep's runs by study.stats' rule (see study.report.claims)
    claims: list = field(default_factory=list)
    slurm: dict = field(default_factory=dict)  # SLURM settings (see study.sweep)

    def expand(self, quick: bool = False, overrides: dict | None = None,
               where: dict | None = None) -> list[PlannedRun]:
        """Every run of the spec, resolved (paper defaults explicit), in a stable order.

        `quick` applies the spec's stated scale-down; `overrides` (e.g. a data_dir or a
        stand-in data set) apply to every run last; `where` ({key: [values]}) keeps only
        the runs whose labels take one of the given values (a subset of the table).
        `overrides` may also name the seeds: `seed: 1` or `seeds: [1, 2]` replace the
        spec's (a seed set on every run would otherwise be overwritten by them)."""
        scale = dict(self.quick) if quick else {}
        seeds = scale.pop("seeds", self.seeds)
        overrides = dict(overrides or {})
        if "seed" in overrides and "seeds" in overrides:
            raise ConfigError("give seed or seeds, not both")
        if "seed" in overrides:
            overrides["seeds"] = [overrides.pop("seed")]
        if "seeds" in overrides:
            seeds = overrides.pop("seeds")
            check_seeds(seeds, f"spec {self.name}", "--set seeds")
        # an override of a grid key (a stand-in data set, say) collapses that axis
        grid = {k: [overrides[k]] if k in overrides else v for k, v in self.grid.items()}
        grid_keys = list(grid)
        planned = []
        for combo in itertools.product(*(grid[k] for k in grid_keys)):
            for variant in self.variants or [{}]:
                labels = normalize_labels({**dict(zip(grid_keys, combo)), **variant})
                for seed in seeds:
                    values = {**self.base, **scale, **labels, **overrides, "seed": seed}
                    config = TrainConfig.from_dict(values).resolved()
                    planned.append(PlannedRun(run_key(config), labels, seed, config))
        keys = [p.key for p in planned]
        if len(set(keys)) != len(keys):
            raise ConfigError(f"spec {self.name}: two runs resolve to the same config")
        for key, values in (where or {}).items():
            wanted = [normalize_labels({key: v})[key] for v in values]
            planned = [p for p in planned if p.labels.get(key) in wanted]
        if where and not planned:
            raise ConfigError(f"spec {self.name}: no run matches {where}")
        return planned


def normalize_labels(labels: dict) -> dict:
    """Label values as the config reads them (YAML's "2e-3" string becomes 0.002)."""
    typed = TrainConfig.from_dict(labels)
    return {k: getattr(typed, k) for k in labels}


def run_key(config: TrainConfig) -> str:
    payload = json.dumps(key_fields(config), sort_keys=True, default=str)
    return hashlib.sha1(payload.encode()).hexdigest()[:12]


def find_spec(name_or_path: str | Path) -> Path:
    path = Path(name_or_path)
    if path.is_file():
        return path
    candidate = SPEC_DIR / f"{name_or_path}.yaml"
    if candidate.is_file():
        return candidate
    known = ", ".join(sorted(p.stem for p in SPEC_DIR.glob("*.yaml"))) or "none"
    raise ConfigError(f"no experiment spec {name_or_path!r} (a YAML path, or one of: {known})")


def load_spec(name_or_path: str | Path) -> ExperimentSpec:
    path = find_spec(name_or_path)
    values = load_config_file(path)
    if {"implicit", "slimming", "l1norm"} & set(values):
        raise ConfigError(f"{path.name} is a comparison spec: run it with "
                          f"`implicit-sparsity compare --spec {path.stem}`")
    unknown = sorted(set(values) - SPEC_KEYS)
    if unknown:
        raise ConfigError(f"spec {path}: unknown key(s) {', '.join(unknown)}; valid: "
                          f"{', '.join(sorted(SPEC_KEYS))}")
    values.setdefault("name", path.stem)
    spec = ExperimentSpec(**check_spec_values(values, f"spec {path}"))
    check_table_cells(spec, spec.expand())  # every run must resolve: fail now, before work
    if spec.quick:
        check_table_cells(spec, spec.expand(quick=True))
    return spec


# --- the typed boundary of a spec: every field's type, before anything is expanded ---------
def _fail(where: str, key: str, expected: str, value) -> None:
    shown = repr(value)
    raise ConfigError(f"{where}: {key} must be {expected}, got "
                      f"{shown if len(shown) <= 60 else shown[:57] + '...'}")


def check_seeds(seeds, where: str, key: str = "seeds") -> list[int]:
    if not isinstance(seeds, list) or not seeds or not all(
            isinstance(s, int) and not isinstance(s, bool) and 0 <= s <= defaults.MAX_SEED
            for s in seeds):
        _fail(where, key, f"a non-empty list of integers in [0, {defaults.MAX_SEED}]", seeds)
    if len(set(seeds)) != len(seeds):
        _fail(where, key, "a list of distinct seeds", seeds)
    return seeds


def check_spec_values(values: dict, where: str) -> dict:
    """Each spec field of its type (see the module's docstring); one line naming the field."""
    for key in ("name", "title", "paper_ref", "notes"):
        if key in values and not isinstance(values[key], str):
            _fail(where, key, "text", values[key])
    if not values["name"] or "/" in values["name"] or values["name"].startswith("."):
        _fail(where, "name", "a plain name (it names the sweep's folder)", values["name"])
    for key in ("base", "grid", "quick", "table", "slurm"):
        if key in values and not isinstance(values.get(key), dict):
            _fail(where, key, "a mapping", values[key])
    for key, axis in values.get("grid", {}).items():
        if not isinstance(key, str):
            _fail(where, "grid", "a mapping of config keys", key)
        if not isinstance(axis, list) or not axis:
            _fail(where, f"grid.{key}", "a non-empty list of values", axis)
    variants = values.get("variants", [{}])
    if not isinstance(variants, list) or not variants or not all(
            isinstance(v, dict) for v in variants):
        _fail(where, "variants", "a non-empty list of mappings", variants)
    check_seeds(values.get("seeds", [0]), where)
    if "seeds" in values.get("quick", {}):
        check_seeds(values["quick"]["seeds"], where, "quick.seeds")
    table = values.get("table", {})
    for key, names in table.items():
        if key not in TABLE_KEYS:
            _fail(where, f"table.{key}", f"one of {', '.join(TABLE_KEYS)}", key)
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            _fail(where, f"table.{key}", "a list of names", names)
    paper = values.get("paper", [])
    if not isinstance(paper, list) or not all(isinstance(p, dict) for p in paper):
        _fail(where, "paper", "a list of mappings", paper)
    claims = values.get("claims", [])
    if not isinstance(claims, list):
        _fail(where, "claims", "a list of mappings", claims)
    for i, claim in enumerate(claims):
        check_claim(claim, where, f"claims[{i}]")
    runs = math.prod(len(axis) for axis in values.get("grid", {}).values()) * len(variants) * max(
        len(values.get("seeds", [0])), len(values.get("quick", {}).get("seeds", [0])))
    if runs > defaults.MAX_SWEEP_RUNS:
        raise ConfigError(f"{where} plans {runs:,} runs, more than the bound of "
                          f"{defaults.MAX_SWEEP_RUNS:,} (implicit_sparsity.defaults."
                          "MAX_SWEEP_RUNS); split it into smaller specs")
    return values


CLAIM_KEYS = {"claim": str, "value": str, "each": dict, "where": dict, "than": dict}


def check_claim(claim, where: str, key: str) -> None:
    """A claim: `value` of the runs matching `where` and each of `each` (one key: a list
    of values) exceeds that of the runs matching `than` (and that `each` value, unless
    `than` names the key)."""
    if not isinstance(claim, dict) or set(claim) - set(CLAIM_KEYS) or not {
            "claim", "value", "than"} <= set(claim):
        _fail(where, key, "a mapping with claim, value, than (and each, where)", claim)
    for name, kind in CLAIM_KEYS.items():
        if name in claim and not isinstance(claim[name], kind):
            _fail(where, f"{key}.{name}", "text" if kind is str else "a mapping", claim[name])
    each = claim.get("each", {})
    if each and (len(each) != 1 or not isinstance(next(iter(each.values())), list)):
        _fail(where, f"{key}.each", "one key with a list of values", each)
    scalars = (str, int, float, bool, type(None))
    for name in ("where", "than"):
        for label, value in claim.get(name, {}).items():
            if not isinstance(label, str) or not isinstance(value, scalars):
                _fail(where, f"{key}.{name}", "a mapping of config keys to values",
                      claim[name])
    for value in next(iter(each.values())) if each else []:
        if not isinstance(value, scalars):
            _fail(where, f"{key}.each", "one key with a list of values", each)


def check_table_cells(spec: ExperimentSpec, planned: list[PlannedRun]) -> None:
    """Runs that differ in anything but their seed must not share a cell of the table (it
    would average them as if they were seeds). Without `table:`, every label is a row."""
    if not spec.table:
        spec.table = {"rows": list(dict.fromkeys(k for p in planned for k in p.labels))}
    axes = spec.table.get("rows", []) + spec.table.get("columns", [])
    cells: dict[tuple, dict] = {}
    for p in planned:
        cell = tuple(str(p.labels.get(k)) for k in axes)
        other = cells.setdefault(cell, p.labels)
        if other != p.labels:
            differ = sorted(k for k in set(other) | set(p.labels)
                            if other.get(k) != p.labels.get(k))
            raise ConfigError(f"spec {spec.name}: runs that differ in {', '.join(differ)} "
                              "would share one cell of the table; add "
                              f"{differ[0]} to table.rows or table.columns")
