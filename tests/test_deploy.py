"""The slim model where users run it: ONNX (ONNX Runtime) and OpenVINO files, each proven
equal to the PyTorch model within a tolerance derived from float32 arithmetic, timed side
by side; the bad cases (a mismatch, a file the runtime rejects, a missing package) end in
one line with no file that looks valid. `.ci/run` installs onnx, onnxruntime, openvino."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from implicit_sparsity.cli import main
from implicit_sparsity.errors import ConfigError
from implicit_sparsity.prune import prune_model
from implicit_sparsity.prune import runtimes
from test_bad_input import run_cli
from test_weights_only import planted_resnet as weights_only_planted

onnxruntime = pytest.importorskip("onnxruntime")
openvino = pytest.importorskip("openvino")
MODEL = ["--model", "resnets:TinyResNet"]


def planted_resnet() -> nn.Module:
    """test_weights_only's TinyResNet (a dead and a constant channel in every BatchNorm),
    with running statistics that are not the identity, for BatchNorm folding to matter."""
    model = weights_only_planted()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 2.0)
    return model.eval()


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("deploy")
    torch.save(planted_resnet().state_dict(), root / "state.pt")
    torch.save(torch.randn(20, 1, 16, 16, generator=torch.Generator().manual_seed(1)),
               root / "x.pt")
    return root


def test_the_tolerance_comes_from_float32_arithmetic():
    """The model itself in float32 passes (its own error against float64 is the measure);
    an error 100 times PyTorch's does not, nor does a runtime that swaps a clear winner."""
    model = planted_resnet()
    x = [torch.randn(8, 1, 16, 16, generator=torch.Generator().manual_seed(0))]
    own = runtimes.check_runtime("same", model, model, x)
    assert own.holds and 0 < own.max_abs_diff <= own.torch_float32_diff  # (or the eps floor)
    assert own.tolerance == runtimes.RUNTIME_ERROR_FACTOR * own.torch_float32_diff
    noisy = runtimes.check_runtime("noisy", lambda t: model(t) + 100 * own.torch_float32_diff,
                                   model, x)
    assert not noisy.holds and noisy.changed_predictions == 0

    def swapped(t):
        out = model(t).clone()
        out[0] = -out[0]  # the first sample's winner is now its loser
        return out

    check = runtimes.check_runtime("swapped", swapped, model, x)
    assert not check.holds and check.changed_predictions >= 1


def test_onnx_and_openvino_files_compute_what_pytorch_does(tmp_path):
    model = planted_resnet()
    slim = prune_model(model, torch.randn(4, 1, 16, 16)).model
    x = [torch.randn(16, 1, 16, 16, generator=torch.Generator().manual_seed(2))]
    onnx = runtimes.write_export("onnx", slim, x[0], tmp_path / "slim.onnx", x, 1)
    xml = runtimes.write_export("openvino", slim, x[0], tmp_path / "slim.xml", x, 1,
                                onnx_path=tmp_path / "slim.onnx")
    assert onnx.holds and xml.holds and onnx.samples == 16
    # any batch size (the batch dimension is dynamic), BatchNorm folded by the exporter
    import onnx as onnx_package

    graph = onnx_package.load(str(tmp_path / "slim.onnx")).graph
    assert "BatchNormalization" not in {n.op_type for n in graph.node}
    for run in (runtimes.onnxruntime_runner(tmp_path / "slim.onnx", 1),
                runtimes.openvino_runner(tmp_path / "slim.xml", 1)):
        for batch in (1, 5):
            y = torch.randn(batch, 1, 16, 16)
            assert torch.allclose(run(y), slim(y), atol=1e-5)


def test_prune_exports_checks_and_times_in_every_runtime(ws, tmp_path, capsys):
    out, report = tmp_path / "slim", tmp_path / "report.json"
    assert main(["prune", *MODEL, "--weights", str(ws / "state.pt"), "--data",
                 str(ws / "x.pt"), "--criterion", "gamma", "--out", str(out), "--export",
                 "onnx,openvino", "--runtimes", "torch,torch-folded,onnxruntime,openvino",
                 "--threads", "1", "--json", str(report)]) == 0
    printed = capsys.readouterr().out
    for name in ("model.onnx", "slim.onnx", "model.xml", "model.bin", "slim.xml", "slim.bin"):
        assert (out / name).is_file(), name
    saved = json.loads((out / "prune_report.json").read_text())
    assert saved["exports"]["failed"] is None
    assert all(c["holds"] for c in saved["exports"]["files"].values())
    rows = saved["runtime_latency"]
    assert {(r["runtime"], r["batch"]) for r in rows} == {
        (rt, b) for rt in runtimes.RUNTIMES for b in (1, 64)}
    assert all(r["threads"] == 1 and r["rounds"] == 5 and r["before_ms"] > 0 for r in rows)
    assert json.loads(report.read_text())["runtime_latency"] == rows
    assert "onnxruntime" in printed and "/ MACs" in printed


def test_a_file_that_fails_its_check_is_deleted_and_the_rest_kept(ws, tmp_path, capsys,
                                                                  monkeypatch):
    real = runtimes.onnxruntime_runner

    def off_by_a_bit(path, threads):
        run = real(path, threads)
        return lambda x: run(x) + 1e-3  # an export that computes something else
    monkeypatch.setattr(runtimes, "onnxruntime_runner", off_by_a_bit)
    out = tmp_path / "slim"
    code = run_cli(["prune", *MODEL, "--weights", str(ws / "state.pt"), "--data",
                    str(ws / "x.pt"), "--criterion", "gamma", "--no-latency", "--out",
                    str(out), "--export", "onnx"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "does not compute what" in err, err
    assert not list(out.glob("*.onnx"))  # no file that looks valid
    assert (out / "slim.pt").is_file()   # what was proven is not lost
    assert json.loads((out / "prune_report.json").read_text())["exports"]["failed"]


def test_a_model_the_exporter_cannot_capture_leaves_no_file(tmp_path):
    """A branch on the data: the exporter refuses it, or captures one branch only, which
    the check on inputs taking both branches finds; either way, one line and no file."""

    class Branchy(nn.Module):
        def forward(self, x):
            return x * 2 if x.sum() > 0 else x * 3

    both = [torch.ones(2, 3), -torch.ones(2, 3)]
    with pytest.raises(runtimes.ExportError, match="ONNX export failed|does not compute"):
        runtimes.write_export("onnx", Branchy(), both[0], tmp_path / "b.onnx", both, 1)
    assert not (tmp_path / "b.onnx").exists()


@pytest.mark.parametrize("argv, message", [
    (["--export", "tensorrt"], "--export: unknown 'tensorrt'"),
    (["--runtimes", "torch,tflite"], "--runtimes: unknown 'tflite'"),
    (["--runtime", "onnxruntime"], "give --tune too"),
], ids=["unknown-export", "unknown-runtime", "runtime-without-tune"])
def test_bad_deployment_flags_are_one_line(ws, tmp_path, capsys, argv, message):
    code = run_cli(["prune", *MODEL, "--weights", str(ws / "state.pt"), "--data",
                    str(ws / "x.pt"), "--out", str(tmp_path / "slim"), *argv])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "slim").exists()


def test_a_missing_package_names_what_to_install(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_openvino(name, *args, **kwargs):
        if name.split(".")[0] == "openvino":
            raise ImportError("No module named 'openvino'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_openvino)
    monkeypatch.delitem(__import__("sys").modules, "openvino", raising=False)
    with pytest.raises(ConfigError, match=r"needs the package openvino \(pip install "
                                          r"'implicit-sparsity\[deploy\]'\)"):
        runtimes.DeploymentPlan.from_flags("openvino", None)


def test_tuning_in_onnxruntime_times_exported_candidates():
    from implicit_sparsity.prune.tune import tune_slim

    model = planted_resnet()
    x = torch.randn(8, 1, 16, 16, generator=torch.Generator().manual_seed(3))
    tuned = tune_slim(model, x, check_data=[x], batch_sizes=(1, 8), target_batch=8,
                      threads=1, min_run_time=0.05, rounds=3, roundings=(8,),
                      runtime="onnxruntime")
    assert tuned.runtime == "onnxruntime" and "in onnxruntime" in tuned.table()
    assert {c.layout for c in tuned.candidates} == {"contiguous"} and not tuned.searches
    assert len(tuned.candidates) == 2 and all(len(c.latency) == 2 for c in tuned.candidates)
