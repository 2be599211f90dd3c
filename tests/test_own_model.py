"""A user's own model in the forms people have it: by name from torchvision or timm, or a
factory; weights as a state dict, a checkpoint holding one, a Lightning checkpoint (its
`model.` prefixes), DDP's `module.` prefixes, `.safetensors`; and refusals in one line
(an unknown name, pretrained asked, weights of another model, a pickle with code, an empty
file). Through the real CLI; torchvision and timm are installed by .ci/run."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch

from conftest import TORCHVISION
from implicit_sparsity.cli import main
from test_bad_input import run_cli

pytestmark = pytest.mark.skipif(TORCHVISION is None, reason="torchvision does not import here")

RESNET = ["--model", "torchvision:resnet18", "--model-args", "{num_classes: 10}"]


class Payload:
    def __reduce__(self):
        return (print, ("pwned",))


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("own-model")
    torch.save(torch.rand(4, 3, 32, 32), root / "x.pt")
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10)
    with torch.no_grad():
        model.layer1[0].bn1.weight[:3] = 0.0  # three dead filters to find
        model.layer1[0].bn1.bias[:3] = -1.0
    state = model.state_dict()
    torch.save(state, root / "state.pt")
    torch.save({"epoch": 3, "model_state_dict": state}, root / "checkpoint.pt")
    torch.save({"epoch": 3, "state_dict": {f"model.{k}": v for k, v in state.items()}},
               root / "lightning.ckpt")
    torch.save({f"module.{k}": v for k, v in state.items()}, root / "ddp.pt")
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in state.items()}, str(root / "state.safetensors"))
    torch.save(torchvision.models.resnet34(num_classes=10).state_dict(), root / "resnet34.pt")
    (root / "code.pt").write_bytes(pickle.dumps({"w": Payload()}))
    (root / "empty.pt").write_bytes(b"")
    return root


@pytest.mark.parametrize("weights", ["state.pt", "checkpoint.pt", "lightning.ckpt", "ddp.pt",
                                     "state.safetensors"])
def test_every_weights_form_loads_and_its_dead_filters_are_found(ws, tmp_path, capsys,
                                                                 weights):
    report = tmp_path / "report.json"
    argv = ["analyze", *RESNET, "--weights", str(ws / weights), "--data", str(ws / "x.pt"),
            "--criterion", "gamma", "--json", str(report)]
    assert main(argv) == 0
    assert "ResNet from torchvision:resnet18" in capsys.readouterr().out
    dead = {l["name"]: l["inactive_gamma"] for l in json.loads(report.read_text())["layers"]}
    assert dead["layer1.0.conv1"] == 3 and sum(dead.values()) == 3  # the planted ones


@pytest.mark.parametrize("source", [["--model", "timm:resnet18d", "--model-args",
                                     "{num_classes: 10}"],
                                    ["--model", "torchvision:mobilenet_v2", "--model-args",
                                     "{num_classes: 10, width_mult: 0.25}"]])
def test_models_by_name_from_each_registry(ws, capsys, source):
    assert main(["analyze", *source, "--data", str(ws / "x.pt"), "--criterion", "gamma"]) == 0
    assert "|gamma| <" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["--model", "torchvision:nosuchnet"], "torchvision has no model 'nosuchnet'"),
    (["--model", "timm:nosuchnet"], "timm has no model 'nosuchnet'"),
    (["--model", "timm:resnet18d", "--model-args", "{pretrained: true}"],
     "pretrained weights are never downloaded"),
    (["--model", "torchvision:resnet18", "--model-args", "{weights: DEFAULT}"],
     "pretrained weights are never downloaded"),
    (RESNET + ["--weights", "{ws}/resnet34.pt"], "do not fit torchvision:resnet18: unexpected"),
    (RESNET + ["--weights", "{ws}/code.pt"], "pickled code or objects"),
    (RESNET + ["--weights", "{ws}/empty.pt"], "cannot load it"),
], ids=["unknown-torchvision", "unknown-timm", "pretrained", "weights-default",
        "another-model", "pickle-with-code", "empty-file"])
def test_bad_models_and_weights_are_one_line(ws, capsys, argv, message):
    argv = [a.replace("{ws}", str(ws)) for a in argv]
    code = run_cli(["analyze", *argv, "--data", str(ws / "x.pt"), "--criterion", "gamma"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert message in err, err
    assert "pwned" not in capsys.readouterr().out
