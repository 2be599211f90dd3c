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

Every run is keyed by a hash of its resolved config, so a sweep knows what it already has.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path

from implicit_sparsity.errors import ConfigError
from implicit_sparsity.train.config import TrainConfig, key_fields, load_config_file

#: Where specs are looked up by name (a path works too).
SPEC_DIR = Path(__file__).resolve().parents[2] / "experiments"
SPEC_KEYS = {"name", "title", "paper_ref", "base", "grid", "variants", "seeds", "quick",
             "table", "paper", "notes", "slurm"}


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
            if not isinstance(seeds, list) or not seeds or not all(
                    isinstance(s, int) and not isinstance(s, bool) for s in seeds):
                raise ConfigError(f"seeds must be a list of integers, got {seeds!r}")
        # an override of a grid key (a stand-in data set, say) collapses that axis
        grid = {k: [overrides[k]] if k in overrides else v for k, v in self.grid.items()}
        grid_keys = list(grid)
        planned = []
        for combo in itertools.product(*(grid[k] for k in grid_keys)):
            for variant in self.variants or [{}]:
                labels = normalize_labels({**dict(zip(grid_keys, combo)), **variant})
                for seed in seeds:
                    values = {**self.base, **labels, **scale, **overrides, "seed": seed}
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
    spec = ExperimentSpec(**values)
    spec.expand()  # every run must resolve: fail now, before any work
    if spec.quick:
        spec.expand(quick=True)
    return spec
