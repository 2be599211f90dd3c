"""Experiment specs, sweeps and reports, on a tiny spec over small real files."""

import csv
import io
import json
import os

import pytest

from implicit_sparsity.cli import main
from implicit_sparsity.errors import ConfigError
from implicit_sparsity.study.report import claim_verdicts, collect, render
from implicit_sparsity.study.spec import load_spec
from implicit_sparsity.study.sweep import run_sweep

SPEC = """
name: tiny
title: "tiny: Adam vs SGD with L2"
base: {{model: basicnet, dataset: fashion-mnist, data_dir: {data}, width: "0.0625",
        epochs: [2], batch_size: 40}}
variants:
  - {{optimizer: adam, regularizer: l2, lam: 1e-3}}
  - {{optimizer: sgd, regularizer: l2, lam: 1e-3}}
seeds: [0, 1]
quick: {{epochs: [1], seeds: [0]}}
table: {{rows: [optimizer, regularizer, lam], columns: [],
        values: [sparsity_gamma, sparsity_activation, test_error, pruned_test_error]}}
paper:
  - {{optimizer: adam, regularizer: l2, lam: 1e-3, sparsity_gamma: 85, test_error: 13.1}}
"""


@pytest.fixture
def spec_path(tmp_path, fashion_dir):
    path = tmp_path / "tiny.yaml"
    path.write_text(SPEC.format(data=fashion_dir))
    return path


def test_spec_expansion_is_stable_and_keyed_by_config(spec_path):
    spec = load_spec(spec_path)
    runs = spec.expand()
    assert len(runs) == 4 and [r.seed for r in runs] == [0, 1, 0, 1]
    assert runs[0].labels == {"optimizer": "adam", "regularizer": "l2", "lam": 1e-3}
    assert runs[0].config.lr == 1e-3 and runs[2].config.lr == 0.1  # paper defaults
    assert [r.key for r in spec.expand()] == [r.key for r in runs]
    assert len({r.key for r in runs}) == 4
    quick = spec.expand(quick=True)
    assert len(quick) == 2 and quick[0].config.epochs == [1]
    assert quick[0].key != runs[0].key
    # seeds from the command line replace the spec's (a plain `seed` used to be overwritten)
    assert [r.seed for r in spec.expand(quick=True, overrides={"seed": 5})] == [5, 5]
    assert [r.config.seed for r in spec.expand(overrides={"seeds": [2, 3]})] == [2, 3, 2, 3]
    for bad in ({"seeds": "1"}, {"seeds": []}, {"seed": 1, "seeds": [1]}, {"seeds": [1.5]}):
        with pytest.raises(ConfigError, match="seed"):
            spec.expand(overrides=bad)


def test_shipped_specs_load():
    for name, runs in (("table1", 210), ("table2", 24), ("table3", 42)):
        spec = load_spec(name)
        assert len(spec.expand()) == runs and spec.paper
    table3 = {tuple(r.labels.values()): r.config for r in load_spec("table3").expand()}
    # batch 160 on the iterations of batch 40: four times the epochs
    assert table3[("cifar10", 1e-4, 160)].epochs == [1000, 300]
    stand_in = load_spec("table1").expand(quick=True, overrides={"dataset": "fashion-mnist"})
    assert len(stand_in) == 35 and {r.config.dataset for r in stand_in} == {"fashion-mnist"}
    subset = load_spec("table1").expand(where={"optimizer": ["adam"], "lam": ["1e-4", "1e-3"]})
    assert len(subset) == 4 * 2 * 3  # L2 and WD at 1e-3 and 1e-4, 2 data sets, 3 seeds
    assert {(r.labels["optimizer"], r.labels["lam"]) for r in subset} == {("adam", 1e-4),
                                                                         ("adam", 1e-3)}
    with pytest.raises(ConfigError, match="is a comparison spec"):
        load_spec("compare_table7")
    with pytest.raises(ConfigError, match="no experiment spec 'table99'"):
        load_spec("table99")


def test_every_shipped_spec_resolves_and_its_paper_numbers_match_its_runs():
    from implicit_sparsity.study.spec import SPEC_DIR, normalize_labels

    specs = sorted(p for p in SPEC_DIR.glob("*.yaml") if not p.name.startswith("compare_"))
    assert len(specs) >= 15
    for path in specs:
        spec = load_spec(path)
        keys = spec.table["rows"] + spec.table["columns"]
        planned = {tuple(r.labels.get(k) for k in keys) for r in spec.expand()}
        assert spec.paper or not spec.paper_ref, path.name  # no paper_ref: beyond the paper
        for entry in spec.paper:
            labels = normalize_labels({k: entry[k] for k in keys})
            assert tuple(labels[k] for k in keys) in planned, (path.name, entry)
            assert set(entry) - set(keys) <= set(spec.table["values"]), (path.name, entry)


def test_sweep_skips_finished_runs_and_resumes_the_rest(spec_path, tmp_path):
    spec = load_spec(spec_path)
    out = tmp_path / "sweep"
    keys = run_sweep(spec, out, quick=True, workers=1)
    assert all((out / "runs" / k / "evaluation.json").is_file() for k in keys)
    evaluation = json.loads((out / "runs" / keys[0] / "evaluation.json").read_text())
    assert set(evaluation["layers"]) == {f"C{i}" for i in range(1, 8)}
    assert evaluation["changed_predictions"] == 0
    # an interrupted run: its evaluation (and summary) missing, its checkpoint there
    (out / "runs" / keys[1] / "evaluation.json").unlink()
    (out / "runs" / keys[1] / "summary.json").unlink()
    stamp = (out / "runs" / keys[0] / "evaluation.json").stat().st_mtime_ns
    run_sweep(spec, out, quick=True, workers=1, threads=1)  # a caller's share of the cores
    assert (out / "runs" / keys[1] / "evaluation.json").is_file()
    assert (out / "runs" / keys[0] / "evaluation.json").stat().st_mtime_ns == stamp

    def threads(key):
        return json.loads((out / "runs" / key / "summary.json").read_text())["torch_threads"]
    assert threads(keys[0]) == os.cpu_count() and threads(keys[1]) == 1
    with pytest.raises(ConfigError, match="holds a sweep of tiny"):
        run_sweep(spec, out, quick=False, workers=1)


def test_packed_sweep_gives_the_same_table(spec_path, tmp_path):
    spec = load_spec(spec_path)
    keys = run_sweep(spec, tmp_path / "packed", workers=1, pack=4)
    plain = run_sweep(spec, tmp_path / "plain", workers=1)
    assert keys == plain
    for key in keys:
        a = json.loads((tmp_path / "packed" / "runs" / key / "evaluation.json").read_text())
        b = json.loads((tmp_path / "plain" / "runs" / key / "evaluation.json").read_text())
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-3)
        assert a["sparsity_gamma"] == pytest.approx(b["sparsity_gamma"], abs=2.0)
    metrics = (tmp_path / "packed" / "runs" / keys[0] / "metrics.jsonl").read_text()
    assert '"packed_with": 4' in metrics


def test_parallel_workers_and_report_formats(spec_path, tmp_path, capsys):
    out = tmp_path / "sweep"
    assert main(["sweep", str(spec_path), "--out", str(out), "--workers", "2"]) == 0
    printed = capsys.readouterr().out
    assert "| adam | l2 | 0.001 |" in printed and "± " in printed  # mean ± std of 2 seeds
    spec, records = collect(out)
    assert len(records) == 4
    markdown = render(spec, records)
    adam_row = next(line for line in markdown.splitlines() if line.startswith("| adam"))
    assert "| 85 |" in adam_row and "| 13.1 |" in adam_row  # the paper's numbers beside
    # what ours are, plainly: the data set, the scale, the seeds
    assert "Ours: fashion-mnist, width 0.0625, epochs [2], 2 seed(s) per row." in markdown
    rows = list(csv.DictReader(io.StringIO(render(spec, records, "csv"))))
    adam_gamma = [r for r in rows if r["optimizer"] == "adam" and r["value"] == "sparsity_gamma"]
    assert adam_gamma[0]["n"] == "2" and adam_gamma[0]["paper"] == "85"
    per_seed = [json.loads((out / "runs" / r["key"] / "evaluation.json").read_text())
                ["sparsity_gamma"] for r in records if r["optimizer"] == "adam"]
    assert float(adam_gamma[0]["mean"]) == pytest.approx(sum(per_seed) / 2)
    latex = render(spec, records, "latex")
    assert latex.startswith("\\begin{tabular}") and "$\\pm$" in latex
    assert main(["report", str(out), "--format", "csv", "--out", str(tmp_path / "t.csv"),
                 "--figures", str(tmp_path / "figures")]) == 0
    assert (tmp_path / "t.csv").read_text().startswith("optimizer,regularizer,lam,value")
    for stem in ("layer_sparsity", "universality", "gamma_beta_1", "gamma_beta_2"):
        for suffix in ("png", "pdf"):
            assert (tmp_path / "figures" / f"{stem}.{suffix}").stat().st_size > 1000
    assert "optimizer=sgd" in (tmp_path / "figures" / "index.txt").read_text()


def strict_latex_problems(latex: str) -> list[str]:
    """What a LaTeX run would choke on in a tabular of plain text cells: a reserved
    character not escaped, or a non-ASCII character outside math mode."""
    import re

    problems = []
    text = re.sub(r"\$[^$]*\$", "", latex)          # math mode: $\gamma$, $\pm$
    text = re.sub(r"\\(textbackslash|textasciitilde|textasciicircum)\{\}", "", text)
    text = re.sub(r"\\[&%$#_{}]", "", text)           # escaped characters
    text = re.sub(r"\\(begin|end)\{tabular\}(\{[lrc]+\})?", "", text)
    text = text.replace("\\hline", "").replace("\\\\", "")
    for ch in "%#_{}$^~\\":
        if ch in text:
            problems.append(f"unescaped {ch!r}")
    if any(ord(ch) > 127 for ch in text):
        problems.append("non-ASCII outside math mode")
    columns = len(re.match(r"\\begin\{tabular\}\{([lrc]+)\}", latex).group(1))
    for line in latex.splitlines():
        if line.endswith("\\\\") and line.count(" & ") != columns - 1:
            problems.append(f"{line.count(' & ') + 1} cells in a {columns}-column row")
    return problems


def test_latex_tables_escape_what_latex_reserves():
    spec = {"name": "t", "table": {"rows": ["optimizer"], "columns": [],
                                   "values": ["sparsity_gamma", "layers.C1.sparsity_gamma"]}}
    records = [{"optimizer": "adam_w & co #1", "sparsity_gamma": 50.0 + s, "seed": s,
                "layers": {"C1": {"sparsity_gamma": 10.0}}} for s in (0, 1)]
    latex = render(spec, records, "latex")
    assert strict_latex_problems(latex) == [], latex
    assert "adam\\_w \\& co \\#1" in latex and "$\\gamma$" in latex and "$\\pm$" in latex
    assert strict_latex_problems("\\begin{tabular}{lr}\na_b & 5% \\\\\n\\end{tabular}") \
        == ["unescaped '%'", "unescaped '_'"]  # the checker itself catches both


def test_a_row_labelled_by_a_dict_or_list_is_one_row_in_spec_order():
    """A variant's `optimizer_args: {betas: [0.9, 0.99]}` labels its row (the default table's
    rows are every label): the table keys and prints it as one-line YAML."""
    adam = {"optimizer": "adam", "optimizer_args": {"betas": [0.9, 0.99]}}
    spec = {"name": "t", "variants": [{"optimizer": "sgd"}, adam],
            "table": {"rows": ["optimizer", "optimizer_args"], "columns": [],
                      "values": ["sparsity_gamma"]}}
    records = [{**adam, "seed": s, "sparsity_gamma": 10.0 + 2 * s} for s in (0, 1)]
    records.append({"optimizer": "sgd", "optimizer_args": None, "seed": 0, "sparsity_gamma": 1.0})
    lines = [line for line in render(spec, records).splitlines() if line.startswith("| ")]
    assert lines[1:] == ["| sgd | - | 1.0 |", "| adam | {betas: [0.9, 0.99]} | 11.0 ± 1.4 |"]


def test_a_report_on_a_stand_in_data_set_says_so():
    from implicit_sparsity.study.report import provenance

    spec = {"paper_ref": "main text, Table 1", "paper": [{"dataset": "cifar10"}],
            "_quick": True}
    records = [{"seed": s, "config": {"dataset": "fashion-mnist", "train_subset": 10000,
                                      "width": "0.25", "epochs": [16, 4]}} for s in (0, 1)]
    line = provenance(spec, records)
    assert line.startswith("Ours: fashion-mnist (a stand-in for the paper's data)")
    assert "training images 10000" in line and "2 seed(s)" in line and "--quick" in line
    assert line.endswith("The paper's: main text, Table 1 on cifar10.")


def test_a_dash_under_a_row_key_is_explained_by_the_runs_configs():
    """The L2 rows of modern_optimizers leave `lam` to the scale: the table prints "-" and
    the provenance line says it stands for their configs' 0.002; a row that names it does
    not add to that."""
    from implicit_sparsity.study.report import provenance

    spec = {"table": {"rows": ["optimizer", "lam"], "columns": []}}
    records = [{"optimizer": "adamw", "lam": None, "seed": 0, "config": {"lam": 0.002}},
               {"optimizer": "lion", "lam": 0.5, "seed": 0, "config": {"lam": 0.5}}]
    assert '"-" under lam: 0.002,' in provenance(spec, records)
    assert '"-" under' not in provenance(spec, records[1:])


def test_a_variants_own_keys_hold_at_the_quick_scale_and_its_claims_are_judged():
    """modern_optimizers: the quick scale sets L2's lambda (2e-3) but a recipe's decoupled
    lambda stays its own (Lion 0.5); schedule-free keeps the stages at one rate."""
    spec = load_spec("modern_optimizers")
    quick = spec.expand(quick=True)
    assert len(quick) == 44 and len(spec.expand()) == 66
    by = {(r.config.optimizer, r.config.regularizer, r.seed): r.config for r in quick}
    assert by[("adamw", "l2", 0)].lam == 2e-3 and by[("lion", "decoupled", 1)].lam == 0.5
    assert by[("adamw-schedulefree", "l2", 0)].lr_decay == 1.0
    assert by[("adamw", "l2", 0)].epochs == [32, 8] and by[("muon", "none", 0)].lam == 0.0

    def record(optimizer, seed, sparsity):
        return {"optimizer": optimizer, "regularizer": "l2", "seed": seed,
                "sparsity_gamma": sparsity, "sparsity_activation": sparsity / 2}
    records = [record("sgd", 0, 4.0), record("sgd", 1, 6.0), record("adamw", 0, 30.0),
               record("adamw", 1, 34.0), record("lion", 0, 5.0), record("lion", 1, 7.0)]
    # adamw: 32 ± 2.8 against 5 ± 1.4: holds; lion 6 against 5, within 1 point: inconclusive;
    # nadam: no runs, inconclusive
    verdicts = {(v["value"], v["side"]["optimizer"]): v["verdict"]
                for v in claim_verdicts(spec.__dict__, records) if v["than"]["optimizer"] == "sgd"}
    assert verdicts[("sparsity_gamma", "adamw")] == "holds"
    assert verdicts[("sparsity_gamma", "lion")] == "inconclusive"
    assert verdicts[("sparsity_gamma", "nadam")] == "inconclusive"
    assert verdicts[("sparsity_activation", "adamw")] == "holds"
    text = render(spec.__dict__, records)
    assert "adamw + l2 32.0 ± 2.8 vs sgd + l2 5.0 ± 1.4" in text and "**holds**" in text
    # the third claim compares each optimizer with itself under decoupled decay
    records += [{**record("adamw", s, 1.0 + s), "regularizer": "decoupled"} for s in (0, 1)]
    against_decoupled = [v for v in claim_verdicts(spec.__dict__, records)
                         if v["than"].get("regularizer") == "decoupled"]
    assert [v["than"]["optimizer"] for v in against_decoupled] == [
        "adamw", "nadam", "radam", "adafactor", "lion", "muon", "adamw-schedulefree"]
    assert against_decoupled[0]["verdict"] == "holds"  # 32 ± 2.8 against 1.5 ± 0.7
    assert str(against_decoupled[0]["b"]).startswith("1.5")
    assert against_decoupled[4]["verdict"] == "inconclusive"  # lion: no decoupled runs


def test_a_malformed_claim_is_one_line(tmp_path, fashion_dir):
    path = tmp_path / "bad.yaml"
    path.write_text(SPEC.format(data=fashion_dir)
                    + "claims:\n  - {claim: x, value: sparsity_gamma, each: {a: 1}, than: {}}\n")
    with pytest.raises(ConfigError, match=r"claims\[0\].each must be one key with a list"):
        load_spec(path)


@pytest.mark.parametrize("claims, message", [
    ("0", "claims must be a list of mappings"),
    ("[{claim: x, value: v}]", r"claims\[0\] must be a mapping with claim, value, than"),
    ("[{claim: x, value: v, than: {optimizer: [sgd]}}]", r"claims\[0\].than must be"),
    ("[{claim: x, value: v, than: {}, each: {optimizer: [{a: 1}]}}]", r"claims\[0\].each"),
])
def test_claims_of_the_wrong_shape_are_refused_at_load(tmp_path, fashion_dir, claims, message):
    path = tmp_path / "bad.yaml"
    path.write_text(SPEC.format(data=fashion_dir) + f"claims: {claims}\n")
    with pytest.raises(ConfigError, match=message):
        load_spec(path)
