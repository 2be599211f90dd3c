"""The benchmark scripts run (tiny sizes, CPU) and print their figures, so the ones meant
for a GPU machine are ready when one is at hand."""

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run(script: str, *args: str) -> str:
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_speed_benchmark_prints_its_three_figures():
    out = run("speed.py", "--width", "0.0625", "--images", "400", "--pack", "2",
              "--device", "cpu")
    assert re.search(r"1\. plain loop +\d+ img/s, ours +\d+ img/s: ratio \d+\.\d\d", out)
    assert "training step: eager (no CUDA device)" in out
    assert re.search(r"2\. 2 packed runs +\d+ img/s in all vs +\d+ img/s", out)
    assert re.search(r"3\. Table 1 .* device-hours one run at a time, [\d,]+ packed", out)


def test_denormal_benchmark_flushes_only_in_its_flushing_process():
    out = run("denormal_speed.py", "--width", "0.0625", "--steps", "3", "--dead", "0.5")
    kept = re.search(r"denormals kept: +[\d.]+ img/s \(([\d,]+) denormal", out)
    flushed = re.search(r"flush_denormal: +[\d.]+ img/s \(([\d,]+) at the end", out)
    assert kept and flushed, out
    assert int(kept.group(1).replace(",", "")) > 0
    assert flushed.group(1) == "0"


def test_image_cache_benchmark_reads_back_what_it_decoded():
    out = run("image_cache.py", "--images", "200")
    assert re.search(r"from the cache \(later runs\) +\d+ img/s \([\d.]+ s\): [\d.]+x", out)


def test_zoo_benchmark_prints_a_row_per_architecture():
    out = run("zoo.py", "--quick")
    rows = [line for line in out.splitlines() if "exact (" in line or "refused" in line]
    assert len(rows) == 13, out
    assert re.search(r"resnet +\d+\.\d% .* exact", out)


def test_train_throughput_benchmark_prints_both_baselines():
    out = run("train_throughput.py", "--images", "200", "--epochs", "1", "--width", "0.0625")
    assert re.search(r"plain, indexed +\d+ images/s", out)
    assert re.search(r"plain, DataLoader +\d+ images/s", out)
    assert re.search(r"ratio ours / indexed: \d+\.\d\d .* ours / DataLoader: \d+\.\d\d", out)


def test_train_throughput_benchmark_runs_on_synthetic_files():
    """--synthetic: no data set on the machine (the GPU check); random IDX files instead."""
    out = run("train_throughput.py", "--images", "80", "--epochs", "1", "--width", "0.0625",
              "--synthetic")
    assert re.search(r"implicit-sparsity +\d+ images/s", out)


def test_prune_speed_benchmark_prints_its_ratios_and_why():
    # the runtime column in PyTorch: ONNX Runtime's exports (6 s each here) are
    # test_deploy's to check
    out = run("prune_speed.py", "--width", "0.125", "--min-run-time", "0.02", "--rounds", "2",
              "--threads", "1", "--runtimes", "torch", "--runs", "1")
    for batch in (64, 1):
        assert re.search(rf"batch +{batch}: latency-tuned .* = \d+\.\d\d of the MAC reduction "
                         r"\d+\.\d\dx \(target >= [\d.]+: (met|NOT met)\)", out), out
    assert len(re.findall(r"^features\.\d+\.conv +\d", out, re.M)) == 7
    assert re.search(r"at equal efficiency .* = \d+\.\d\d of the MAC reduction", out)
    # the runtime column: the runtime's original latency and ratios, with a verdict
    assert re.search(r"^\| torch \| [\d.]+ \([\d.]+-[\d.]+\) \| .* (met|NOT met) \|$",
                     out, re.M), out


def test_any_cnn_benchmark_prints_a_row_per_criterion_and_takes_what_the_rules_allow():
    out = run("any_cnn.py", "--models", "mobilenet_v2")
    rows = re.findall(r"\| depthwise chain \| tv mobilenet_v2 \| (gamma|activation) \| (\d+) \| "
                      r"(\d+) \| (\d+) \((\d+)%\) \|.*\| yes \|", out)
    assert [r[0] for r in rows] == ["gamma", "activation"], out
    assert all(int(r[2]) > 0 and int(r[4]) >= 90 for r in rows)


def test_harvest_benchmark_prints_both_arms_and_the_targets(fashion_dir):
    out = run("harvest.py", "--quick", "--rows", "basicnet", "--seeds", "0",
              "--data-dir", str(fashion_dir))
    assert re.search(r"basicnet seed 0 harvested : [\d.]+ s, test error", out)
    assert re.search(r"basicnet seed 0 full width: [\d.]+ s, .* filters ever removable", out)
    assert re.search(r"basicnet +\d+\.\d\dx .* -> ", out)
    assert re.search(r"targets: wall ratio \d+\.\d\d >= 1\.2 (met|NOT met)", out)


def test_optimizer_step_benchmark_times_muon_both_ways_against_adamw():
    out = run("optimizer_step.py", "--width", "0.0625", "--steps", "2", "--rounds", "2")
    for label in ("adamw", "muon", "muon-float32"):
        assert re.search(rf"^{label} +[\d.]+ ms/step .*ratio to adamw [\d.]+$", out, re.M), out


def test_findings_calibration_trains_only_the_roles_asked_for(tmp_path):
    """Finding 6's pair alone: two runs (the reference, the big batch), finding 6 judged
    on them, and a finding whose runs were left out inconclusive with "-" for them."""
    from conftest import write_fashion_mnist

    data = write_fashion_mnist(tmp_path / "fashion", n_train=600, n_test=300)  # 5 classes
    out = run("findings_calibration.py", "--out", str(tmp_path / "out"), "--candidates",
              "tiny", "--roles", "adam-l2,adam-l2-big-batch", "--data-dir", str(data))
    assert re.search(r"== tiny \([\d.]+ min, 2 runs,", out), out
    assert re.search(r"^ +6 (holds|does not hold|inconclusive) +small batch", out, re.M), out
    assert re.search(r"^ +7 inconclusive +wider [\d.]+% vs narrower -%", out, re.M), out


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_killed_calibration_takes_its_workers_with_it(tmp_path):
    """kill -9 of the calibration script while its candidate's worker runs: the worker ends
    too (the sweep's pool; a plain ProcessPoolExecutor's workers trained on unseen)."""
    from conftest import write_fashion_mnist
    from test_hardening import _alive, _children

    data = write_fashion_mnist(tmp_path / "fashion", n_train=600, n_test=300)
    script = subprocess.Popen(
        [sys.executable, str(ROOT / "benchmarks" / "findings_calibration.py"), "--out",
         str(tmp_path / "out"), "--candidates", "tiny", "--data-dir", str(data)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
    try:
        deadline = time.time() + 120
        workers = []
        while time.time() < deadline and script.poll() is None and not workers:
            workers = [w for w in _children(script.pid) if _alive(w)]
            time.sleep(0.2)
        assert workers, "no worker process started"
    finally:
        script.kill()
        script.wait(30)
    deadline = time.time() + 30
    while time.time() < deadline and any(_alive(w) for w in workers):
        time.sleep(0.2)
    assert not any(_alive(w) for w in workers), "the worker went on after its script died"
