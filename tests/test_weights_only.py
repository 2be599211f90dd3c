"""`analyze FILE` with no model: sparsity by |gamma| from a weights file's tensors alone,
in every form a user has them, agreeing with the full analysis of the same model."""

import json

import pytest
import torch
from torch import nn

from implicit_sparsity.cli import main
from implicit_sparsity.measure.report import analyze
from implicit_sparsity.measure.weights_only import weights_only_report
from resnets import TinyResNet


def planted_resnet() -> nn.Module:
    torch.manual_seed(0)
    model = TinyResNet()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.weight[:2] = 0.0
                module.bias[0] = -1.0   # zero after the ReLU: dead
                module.bias[1] = 0.5    # the constant 0.5
    return model.eval()


def test_the_report_finds_each_batchnorm_and_its_conv_and_agrees_with_analyze():
    model = planted_resnet()
    report = weights_only_report(model.state_dict())
    names = [l.name for l in report.layers]
    assert names == ["stem.1", "layer1.bn1", "layer1.bn2", "layer2.bn1", "layer2.bn2",
                     "layer2.down.1"]
    assert all(l.dead == 1 and l.constant == 1 for l in report.layers)
    convs = {l.name: l.conv for l in report.layers}
    assert convs == {"stem.1": "stem.0", "layer1.bn1": "layer1.conv1",
                     "layer1.bn2": "layer1.conv2", "layer2.bn1": "layer2.conv1",
                     "layer2.bn2": "layer2.conv2", "layer2.down.1": "layer2.down.0"}
    down = report.layers[-1]  # 16 filters of 8 x 1 x 1: two rows freed
    assert (down.conv_weights, down.conv_weights_freed) == (128, 16)
    full = analyze(model, None, criterion="gamma")
    assert full.total("gamma") == (report.to_dict()["total"]["inactive"],
                                   report.to_dict()["total"]["channels"])


def test_a_conv_is_paired_only_where_names_and_shapes_make_it_certain():
    state = {"a.weight": torch.zeros(4, 3, 3, 3), "norm.weight": torch.ones(8),
             "norm.bias": torch.zeros(8), "norm.running_mean": torch.zeros(8),
             "norm.running_var": torch.ones(8)}
    layer, = weights_only_report(state).layers
    assert layer.conv is None  # another module, and 4 rows for 8 channels


@pytest.mark.parametrize("form", ["state-dict", "checkpoint", "safetensors", "lightning"])
def test_analyze_a_weights_file_alone(form, tmp_path, capsys):
    model = planted_resnet()
    state = model.state_dict()
    path = tmp_path / ("weights.safetensors" if form == "safetensors" else "weights.pt")
    if form == "safetensors":
        from safetensors.torch import save_file
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    elif form == "checkpoint":
        torch.save({"epoch": 3, "state_dict": state, "optimizer": {}}, path)
    elif form == "lightning":
        torch.save({"epoch": 3, "state_dict": {f"model.{k}": v for k, v in state.items()}},
                   path)
    else:
        torch.save(state, path)
    out = tmp_path / "report.json"
    assert main(["analyze", str(path), "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "weights only: the wiring is unknown" in printed
    report = json.loads(out.read_text())
    assert report["total"] == {"inactive": 12, "channels": 72, "percent": 100 * 12 / 72}
    assert sum(l["dead"] for l in report["layers"]) == 6
    assert all(l["conv"] is not None for l in report["layers"])


def test_what_a_weights_file_cannot_answer_is_refused_in_one_line(tmp_path, capsys):
    path = tmp_path / "weights.pt"
    torch.save(planted_resnet().state_dict(), path)
    assert main(["analyze", str(path), "--criterion", "activation"]) == 2
    assert "needs the model" in capsys.readouterr().err
    linear = tmp_path / "linear.pt"
    torch.save(nn.Linear(3, 2).state_dict(), linear)
    assert main(["analyze", str(linear)]) == 2
    assert "no BatchNorm layer" in capsys.readouterr().err

    class Evil:
        def __reduce__(self):
            return (print, ("pickled code ran",))
    evil = tmp_path / "evil.pt"
    torch.save({"state_dict": Evil()}, evil)
    assert main(["analyze", str(evil)]) == 2
    captured = capsys.readouterr()
    assert "pickled code ran" not in captured.out and "error" in captured.err.lower()


def test_a_checkpoint_with_ema_weights_names_them_and_uses_the_plain_ones(tmp_path):
    model = planted_resnet()
    state = model.state_dict()
    ema = {k: (torch.ones_like(v) if k.endswith(".weight") and v.dim() == 1 else v)
           for k, v in state.items()}  # no channel dead in the average
    path = tmp_path / "checkpoint.pt"
    torch.save({"state_dict": state, "model_ema": ema, "epoch": 9}, path)
    out = tmp_path / "report.json"
    with pytest.warns(UserWarning, match="EMA weights under 'model_ema'.*'state_dict'"):
        assert main(["analyze", str(path), "--json", str(out)]) == 0
    assert json.loads(out.read_text())["total"]["inactive"] == 12  # the plain weights'


def test_the_weights_alone_agree_with_the_full_analysis_per_layer_on_a_timm_model():
    from conftest import TORCHVISION  # noqa: F401  (timm imports torchvision)
    timm = pytest.importorskip("timm")

    torch.manual_seed(0)
    model = timm.create_model("resnet18d", num_classes=10).eval()
    with torch.no_grad():
        for i, bn in enumerate(m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
            bn.weight[: 1 + i % 3] = 0.0  # 1-3 channels per layer below the threshold
    report = weights_only_report(model.state_dict())
    full = analyze(model, None, criterion="gamma")
    by_bn = {l.name: l.inactive for l in report.layers}
    assert len(by_bn) == len(full.layers)  # one BatchNorm per conv feature
    bn_of_conv = {l.conv: l.name for l in report.layers if l.conv is not None}
    compared = [layer for layer in full.layers if layer.name in bn_of_conv]
    assert len(compared) >= len(full.layers) - 2  # timm's names pair all but a few
    for layer in compared:
        assert by_bn[bn_of_conv[layer.name]] == layer.inactive_gamma, layer.name
    assert sum(by_bn.values()) == full.total("gamma")[0]
