"""The findings report: the verdict rule against hand numbers, each finding's reading of
its runs, and the whole command at the tiny scale on small real files."""

from __future__ import annotations

import json

from implicit_sparsity.cli import main
from implicit_sparsity.findings.claims import (FAILS, FINDINGS, HOLDS, INCONCLUSIVE, Context,
                                               Stat, combine, compare)


def test_the_verdict_rule_by_hand():
    # difference 5, spread sqrt(1 + 1) = 1.41: holds; the other way: does not hold
    assert compare(Stat(10, 1, 2), Stat(5, 1, 2)) == HOLDS
    assert compare(Stat(5, 1, 2), Stat(10, 1, 2)) == FAILS
    # difference 2 inside a spread of sqrt(4 + 4) = 2.83: inconclusive
    assert compare(Stat(12, 2, 3), Stat(10, 2, 3)) == INCONCLUSIVE
    # one seed (no spread): the minimum effect of 1 point decides
    assert compare(Stat(10.5, 0, 1), Stat(10, 0, 1)) == INCONCLUSIVE
    assert compare(Stat(11.5, 0, 1), Stat(10, 0, 1)) == HOLDS
    assert compare(Stat(5, 0, 1), Stat(float("nan"), float("nan"), 0)) == INCONCLUSIVE
    assert combine([HOLDS, HOLDS]) == HOLDS
    assert combine([HOLDS, INCONCLUSIVE]) == INCONCLUSIVE
    assert combine([HOLDS, FAILS, INCONCLUSIVE]) == FAILS
    assert str(Stat.of([10.0, 12.0])) == "11.0 ± 1.4"


def run(sparsity, layers=None, **extra):
    layers = layers or {}
    return {"sparsity_gamma": sparsity, "test_error": 10.0, "pruned_test_error": 10.0,
            "changed_predictions": 0,
            "layers": {f"C{i}": {"sparsity_gamma": layers.get(f"C{i}", sparsity)}
                       for i in range(1, 8)}, **extra}


def test_each_finding_reads_its_runs():
    late = {"C5": 80, "C6": 90, "C7": 95, "C1": 0, "C2": 0, "C3": 0}
    early = {"C1": 10, "C2": 5, "C3": 0, "C5": 0, "C6": 0, "C7": 0}
    runs = {"adam-l2": [run(60, late, run_dir="a"), run(62, late, run_dir="b")],
            "adam-l2-low": [run(10), run(12)], "adam-none": [run(0), run(0.5)],
            "sgd-l2": [run(3, early), run(2, early)], "adam-wd": [run(20), run(25)],
            "task-easier": [run(70), run(72)], "task-harder": [run(60), run(62)],
            "adam-l2-big-batch": [run(40), run(44)], "adam-l2-narrow": [run(61), run(60)],
            "adam-l2-gamma-lr": [run(30), run(31)], "adam-l2-leaky": [run(55), run(58)]}
    runs["wd-pair-l2"], runs["wd-pair-wd"] = runs["adam-l2"], runs["adam-wd"]  # at the same λ
    verdicts = {f.number: f.measure(Context(runs, ("adam",))).verdict for f in FINDINGS}
    assert verdicts[1] == HOLDS       # 0 -> 11 -> 61
    assert verdicts[2] == HOLDS       # adam 61 vs sgd 2.5
    assert verdicts[3] == HOLDS       # L2 61 vs WD 22.5
    assert verdicts[4] == HOLDS       # Adam late, SGD early
    assert verdicts[5] == HOLDS       # easier 71 vs harder 61
    assert verdicts[6] == HOLDS       # batch 40: 61 vs 160: 42
    assert verdicts[7] == INCONCLUSIVE  # 61 vs 60.5: no effect
    assert verdicts[8] == HOLDS       # 61 > 30.5 and leaky 56.5 > 30.5
    assert verdicts[9] == INCONCLUSIVE  # no simulation given
    assert verdicts[10] == HOLDS
    assert verdicts[11] == INCONCLUSIVE  # no comparison given
    runs["wd-pair-wd"] = [run(80), run(82)]  # the other way
    runs["adam-l2"][0]["changed_predictions"] = 1
    verdicts = {f.number: f.measure(Context(runs, ("adam",))).verdict for f in FINDINGS}
    assert verdicts[3] == FAILS and verdicts[10] == FAILS


def test_l2_against_wd_is_judged_at_the_scales_pair_and_shows_the_reference_too():
    runs = {"adam-l2": [run(20), run(21)], "adam-wd": [run(30), run(33)],
            "wd-pair-l2": [run(7), run(6)], "wd-pair-wd": [run(2), run(2.5)]}
    finding = next(f for f in FINDINGS if f.number == 3)
    outcome = finding.measure(Context(runs, ("adam",), settings={"lam": 2e-3, "wd_lam": 1e-3}))
    assert outcome.verdict == HOLDS  # 6.5 vs 2.25 at λ 1e-3; the reference pair not judged
    assert "at λ 0.001" in outcome.ours and "reference λ 0.002: L2 20.5" in outcome.ours


def test_the_findings_command_at_the_tiny_scale(tmp_path, capsys):
    from conftest import write_fashion_mnist

    # the tiny scale takes 120 / 60 images, of the first 2 classes in its "easier" runs
    data = write_fashion_mnist(tmp_path / "fashion", n_train=600, n_test=300)
    argv = ["findings", "--scale", "tiny", "--out", str(tmp_path / "out"), "--data-dir",
            str(data)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert out.count("    ours: ") == 11
    report = (tmp_path / "out" / "report.md").read_text()
    assert report.count("\n| ") == 12  # the header and eleven findings
    assert "tiny scale" in report and "Rule: A claim" in report
    assert "What this scale cannot show.** Finding 6" in report
    # finding 11: both errors per explicit arm, each method's fine-tuning protocol stated
    assert "Implicit against explicit pruning (finding 11)" in report
    assert "fine-tuning, slimming: " in report and "fine-tuning, l1norm: " in report
    from implicit_sparsity.findings.plan import SCALES, roles
    from implicit_sparsity.findings.run import collect_roles
    found = collect_roles(tmp_path / "out" / "runs", SCALES["tiny"])
    assert set(found) == set(roles(SCALES["tiny"]))  # every role has its run
    harder = {r["run_dir"] for r in found["task-harder"]}
    assert harder.isdisjoint(r["run_dir"] for r in found["adam-l2"])  # 10 classes, not 5
    page = (tmp_path / "out" / "report.html").read_text()
    assert page.count("data:image/png;base64,") >= 3
    verdicts = json.loads((tmp_path / "out" / "findings.json").read_text())["findings"]
    assert [f["number"] for f in verdicts] == list(range(1, 12))
    assert verdicts[9]["verdict"] == HOLDS  # removing dead filters: exact at any scale
    assert main(argv) == 0  # again: every run is reused
    assert "0 to run" in capsys.readouterr().out


def test_every_scale_plans_distinct_runs():
    from implicit_sparsity.findings.plan import SCALES, findings_spec, roles

    for scale in SCALES.values():
        runs = findings_spec(scale).expand()  # refuses two variants of one config
        assert len(runs) == len(scale.seeds) * len(findings_spec(scale).variants)
        assert roles(scale)["task-easier"] != roles(scale)["task-harder"]
    full = {r.labels.get("dataset") for r in findings_spec(SCALES["full"]).expand()}
    assert full == {None, "cifar100"}  # CIFAR-10 is the base: the harder task differs
