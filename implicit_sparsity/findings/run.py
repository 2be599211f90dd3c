"""Run the experiments behind the paper's findings and write one report with a verdict per
finding (`implicit-sparsity findings`).

    OUT/runs/          the sweep of every run (resumable; shared runs trained once)
    OUT/compare/       implicit against explicit pruning (finding 11)
    OUT/report.md      the table: claim, the paper's evidence, ours, verdict; figures
    OUT/report.html    the same, figures inline, for a browser
    OUT/findings.json  the verdicts and numbers
    OUT/findings.yaml  the scale, written first: another scale's findings go elsewhere
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import yaml

from implicit_sparsity.errors import ConfigError
from implicit_sparsity.explicit.compare import compare
from implicit_sparsity.findings.claims import FINDINGS, Context
from implicit_sparsity.findings.plan import REFERENCE, SCALES, findings_spec, roles
from implicit_sparsity.findings.report import write_report
from implicit_sparsity.io import FolderLock, atomic_write_text
from implicit_sparsity.study.simulate import simulate
from implicit_sparsity.study.spec import normalize_labels
from implicit_sparsity.study.sweep import EVALUATION, run_sweep
from implicit_sparsity.train import TrainConfig

MARKER = "findings.yaml"


def collect_roles(sweep_dir: Path, scale) -> dict[str, list[dict]]:
    """Per role, the evaluations of its runs (one per seed), each with its run folder."""
    index = json.loads((sweep_dir / "index.json").read_text())
    found: dict[str, list[dict]] = {}
    for role, labels in roles(scale).items():
        wanted = normalize_labels(labels)
        for key, entry in index.items():
            if entry["labels"] != wanted:
                continue
            path = sweep_dir / "runs" / key / EVALUATION
            if path.is_file():
                evaluation = json.loads(path.read_text())
                found.setdefault(role, []).append({**evaluation, "run_dir": str(path.parent),
                                                   "seed": entry["seed"]})
    return found


def run_findings(out: str | Path, scale: str = "quick", *, workers: int | None = None,
                 data_dir: str | None = None, executor: str = "local",
                 explicit: bool = True, slurm: dict | None = None) -> dict:
    """Train and evaluate what every finding needs at `scale`, then write the report."""
    if scale not in SCALES:
        raise ConfigError(f"unknown scale {scale!r}; valid: {', '.join(SCALES)}")
    chosen = SCALES[scale]
    out = Path(out)
    started = time.perf_counter()
    with FolderLock(out, "findings folder"):
        claim_scale(out, chosen.name)
        spec = findings_spec(chosen)
        run_sweep(spec, out / "runs", workers=workers, data_dir=data_dir, executor=executor,
                  slurm=slurm)
        runs = collect_roles(out / "runs", chosen)
        simulation = _simulation(scale)
        comparison = _comparison(chosen, out / "compare", data_dir) if explicit else None
        context = Context(runs, chosen.adaptive, simulation, comparison,
                          {"lam": chosen.lam, "wd_lam": chosen.wd_lam})
        outcomes = [(finding, finding.measure(context)) for finding in FINDINGS]
        wall = time.perf_counter() - started
        paths = write_report(out, chosen, outcomes, context, wall)
        payload = {"scale": chosen.name, "description": chosen.description,
                   "wall_seconds": wall,
                   "findings": [{"number": f.number, "claim": f.claim, "paper": f.evidence,
                                 "ours": o.ours, "verdict": o.verdict} for f, o in outcomes]}
        atomic_write_text(out / "findings.json", json.dumps(payload, indent=1))
    return {**payload, "files": {k: str(v) for k, v in paths.items()}}


def claim_scale(out: Path, scale: str) -> None:
    """Mark `out` as the findings at `scale` (MARKER); a folder of another scale's findings
    is refused, so that two scales' runs are never mixed."""
    marker = out / MARKER
    if marker.is_file():
        try:
            recorded = yaml.safe_load(marker.read_text())
        except yaml.YAMLError:
            recorded = None
        if not isinstance(recorded, dict):
            raise ConfigError(f"{marker} is damaged; move the folder away or repair it")
        if recorded.get("scale") != scale:
            raise ConfigError(f"{out} holds the findings at scale {recorded.get('scale')}, not "
                              f"{scale}; choose another --out")
        return
    atomic_write_text(marker, yaml.safe_dump({"scale": scale}))


def _simulation(scale: str):

    steps = 300 if scale == "tiny" else None  # the paper's 10,000 otherwise
    return simulate(steps=steps, progress=False) if steps else simulate(progress=False)


def _comparison(scale, out: Path, data_dir: str | None):

    labels = roles(scale)[REFERENCE]
    base = TrainConfig.from_dict({**scale.base, **labels, "seed": scale.seeds[0],
                                  **({"data_dir": data_dir} if data_dir else {})})
    kwargs = dict(scale.compare)
    return compare(base, out, latency=False, seeds=tuple(scale.seeds), **kwargs)
