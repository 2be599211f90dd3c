"""Harvesting dead filters while training (train.harvest): the step after a harvest is the
step the unharvested model takes, the optimizer's state follows the surgery, a killed
harvesting run resumes to the uninterrupted run's end, and what cannot harvest says so."""

import copy
import json
import os
import signal
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from implicit_sparsity.cli import main
from implicit_sparsity.errors import ConfigError, PackingError
from implicit_sparsity.io.run_dir import CHECKPOINT
from implicit_sparsity.models import build_model
from implicit_sparsity import defaults
from implicit_sparsity.optim import (Regularizer, build_optimizer, param_groups, regularized_step,
                                     set_mode)
from implicit_sparsity.optim.optimizers import OPTIMIZERS, resolve_hyperparameters
from implicit_sparsity.prune.api import prune_model
from implicit_sparsity.train import (TrainConfig, load_bn_history, load_checkpoint,
                                     read_metrics, train)
from implicit_sparsity.train.harvest import Harvester
from implicit_sparsity.train.loop import make_harvester
from implicit_sparsity.train.packed import train_packed
from implicit_sparsity.study.sweep import evaluate_run
from implicit_sparsity.train.restore import build_model_for, load_trained

#: Planted dead channels (gamma 0, beta -1: ReLU(0 * x + beta) is exactly zero in both
#: modes) of BasicNet's feature layers, by BatchNorm path.
PLANTED = {"features.2.bn": [1, 3], "features.5.bn": [0, 5, 6], "features.9.bn": [2, 7, 9]}
LAYER = {"features.0": "C1", "features.2": "C2", "features.3": "C3", "features.5": "C4",
         "features.6": "C5", "features.8": "C6", "features.9": "C7"}
BEFORE = {"C2": "C1", "C3": "C2", "C4": "C3", "C5": "C4", "C6": "C5", "C7": "C6"}


def basicnet(width="0.125", dtype=torch.float64) -> nn.Module:
    torch.manual_seed(0)
    return build_model("basicnet", in_channels=1, num_classes=10, head="cifar",
                       input_size=28, width=width).to(dtype)


@torch.no_grad()
def plant(model: nn.Module) -> int:
    modules = dict(model.named_modules())
    for path, channels in PLANTED.items():
        modules[path].weight[channels] = 0.0
        modules[path].bias[channels] = -1.0
    return sum(len(c) for c in PLANTED.values())


def kept_part(name: str, tensor: torch.Tensor, channels: dict[str, list[int]]) -> torch.Tensor:
    """`tensor` (a parameter of the unharvested model, or its state) at the elements the
    harvested model kept, worked out by hand from BasicNet's wiring."""
    prefix = ".".join(name.split(".")[:2])
    if prefix in LAYER:
        layer = LAYER[prefix]
        tensor = tensor[channels[layer]]
        if ".conv." in name and layer in BEFORE:
            tensor = tensor[:, channels[BEFORE[layer]]]
        return tensor
    if name == "classifier.0.weight":  # global pooling, then flatten: one column per channel
        return tensor[:, channels["C7"]]
    return tensor


def step(model, optimizer, regularizer, x, y) -> None:
    model.train()
    optimizer.zero_grad()
    F.cross_entropy(model(x), y).backward()
    regularized_step(optimizer, regularizer, 1.0)


#: Adafactor's factored moments, Muon's own weight copies and schedule-free's iterates
#: cannot follow a cut (tested below)
NOT_HARVESTABLE = ("adafactor", "muon", "adamw-schedulefree")


@pytest.mark.parametrize("optimizer,regularizer", [(o, "l2") for o in OPTIMIZERS
                                                  if o not in NOT_HARVESTABLE]
                         + [("adam", "wd"), ("sgd", "wd"), ("adamw", "decoupled")])
def test_the_step_after_a_harvest_is_the_step_of_the_unharvested_model(optimizer, regularizer):
    """float64, dead channels exactly zero: on every kept element, the harvested model's next
    step (its optimizer state sliced, not reset) equals the unharvested model's."""
    model = basicnet()
    planted = plant(model)
    x, y = torch.randn(48, 1, 28, 28, dtype=torch.float64), torch.randint(0, 10, (48,))
    hyper = resolve_hyperparameters(optimizer, {})
    groups = param_groups(model, 1e-3, 1.0, 1.0)
    opt = build_optimizer(optimizer, groups, hyper)
    for _ in range(3):  # moments that are not zero, then the harvest
        step(model, opt, Regularizer(regularizer, 1e-3, list(model.parameters()), lr=1e-3),
             x, y)
    twin = copy.deepcopy(model)
    twin_opt = build_optimizer(optimizer, param_groups(twin, 1e-3, 1.0, 1.0), hyper)
    twin_opt.load_state_dict(copy.deepcopy(opt.state_dict()))

    optimizer_id = id(opt)
    record = Harvester(model, x[:32]).harvest(model, opt, epoch=1)
    assert record.refused is None and record.total_removed == planted
    assert id(opt) == optimizer_id and [g["lr"] for g in opt.param_groups] == \
        [g["lr"] for g in twin_opt.param_groups]
    widths = {LAYER[".".join(p.split(".")[:2])]: m.weight.shape[0]
              for p, m in twin.named_modules() if isinstance(m, nn.BatchNorm2d)}
    channels = {name: [i for i in range(n) if i not in record.removed.get(name, [])]
                for name, n in widths.items()}
    assert model.features[5].conv.weight.shape[0] == widths["C4"] - 3

    twin_params = dict(twin.named_parameters())
    for name, param in model.named_parameters():  # the state is sliced, not reset
        for key, value in opt.state[param].items():
            expected = twin_opt.state[twin_params[name]][key]
            if value.dim():
                assert torch.equal(value, kept_part(name, expected, channels)), (name, key)

    step(model, opt, Regularizer(regularizer, 1e-3, list(model.parameters()), lr=1e-3), x, y)
    step(twin, twin_opt, Regularizer(regularizer, 1e-3, list(twin.parameters()), lr=1e-3), x, y)
    for name, param in model.named_parameters():
        expected = kept_part(name, twin_params[name].detach(), channels)
        assert param.shape == expected.shape, name
        # the two models' convolutions sum in other orders (other shapes): float64
        # rounding, ~1e-16 of the terms, which an adaptive step can magnify by up to
        # |gradient| / eps (eps 1e-8: 1e8) and scales by lr (1e-3): ~1e-11 of the weights
        # at most; a wrongly sliced state would be off by its whole value
        torch.testing.assert_close(param.detach(), expected, rtol=1e-9, atol=1e-12)


def test_a_constant_channel_is_kept_and_a_refused_harvest_puts_everything_back(monkeypatch):
    from implicit_sparsity.prune.proof import Equivalence
    from implicit_sparsity.train import harvest

    model = basicnet()
    planted = plant(model)
    with torch.no_grad():
        model.features[3].bn.weight[4] = 0.0
        model.features[3].bn.bias[4] = 0.5  # outputs the constant 0.5: not zero, kept
    x = torch.randn(32, 1, 28, 28, dtype=torch.float64)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    F.cross_entropy(model(x), torch.zeros(32, dtype=torch.long)).backward()
    opt.step()
    record = Harvester(model, x).harvest(model, opt)
    assert record.total_removed == planted and 4 not in record.removed.get("C3", [])
    assert record.reasons == {harvest.NOT_ZERO_IN_TRAINING: 1} and record.dead == planted + 1

    params = list(model.parameters())
    state = {id(p): {k: v.clone() for k, v in opt.state[p].items()} for p in params}
    with torch.no_grad():  # new dead channels, and a proof that fails
        model.features[6].bn.weight[:2] = 0.0
        model.features[6].bn.bias[:2] = -1.0
    monkeypatch.setattr(harvest, "compare_logits",
                        lambda a, b: Equivalence(len(a), 1.0, 1.0, 1, None, None))
    refused = Harvester(model, x).harvest(model, opt)
    assert refused.refused and "outputs changed" in refused.refused
    assert refused.total_removed == 0
    assert all(a is b for a, b in zip(model.parameters(), params))  # the same objects
    assert model.features[6].conv.weight.shape[0] == model.features[6].bn.weight.shape[0]
    assert all(torch.equal(opt.state[p][k], v) for p in params for k, v in state[id(p)].items())
    assert not any(hasattr(m, "_implicit_sparsity_origins") for m in model.modules())


def test_harvesting_by_activation_removes_the_channels_silent_on_the_corpus():
    model = basicnet()
    planted = plant(model)
    corpus = [torch.randn(16, 1, 28, 28, dtype=torch.float64) for _ in range(3)]
    record = Harvester(model, corpus[0], criterion="activation", corpus=corpus).harvest(model)
    assert record.refused is None and record.total_removed == planted


# --- in the training loop -------------------------------------------------------------------
def planted_start(config: TrainConfig, path) -> str:
    """A fresh model of `config` with dead channels planted, as a checkpoint to start from."""
    torch.manual_seed(config.seed)
    model = build_model_for(config.resolved())
    plant(model)
    torch.save({"model": model.state_dict()}, path)
    return str(path)


def harvest_config(fashion_dir, tmp_path, **overrides) -> TrainConfig:
    values = dict(model="basicnet", width="0.0625", dataset="fashion-mnist",
                  data_dir=str(fashion_dir), epochs=[2, 1], batch_size=40, lam=1e-3,
                  crop_padding=2, eval_batch_size=25, seed=3, harvest_every=1)
    values.update(overrides)
    config = TrainConfig(**values)
    config.init_from = planted_start(config, tmp_path / "planted.pt")
    return config


def test_a_harvesting_run_trains_the_narrower_model_and_records_it(fashion_dir, tmp_path):
    out = tmp_path / "run"
    result = train(harvest_config(fashion_dir, tmp_path), out, verbose=False)
    metrics = read_metrics(out)
    planted = sum(len(c) for c in PLANTED.values())
    assert metrics[0]["harvest"]["total_removed"] == planted
    assert metrics[0]["harvest"]["removed"] == {"C2": [1, 3], "C4": [0, 5, 6], "C7": [2, 7, 9]}
    assert sum(metrics[0]["filters_alive"].values()) == 116  # trained at full width
    assert sum(metrics[1]["filters_alive"].values()) == 116 - planted
    assert metrics[1]["model_macs"] < metrics[0]["model_macs"]
    assert metrics[1]["model_params"] == metrics[0]["harvest"]["model_params"]
    # removed filters count as dead, at the original width
    assert metrics[1]["features"]["C4"] == 16 and metrics[1]["inactive_gamma"]["C4"] >= 3
    assert result.model.features[5].conv.weight.shape[0] == 13
    assert result.model.classifier[0].weight.shape[1] == 29

    history = load_bn_history(out)  # gamma / beta at the original width, removed as NaN
    gamma = history["C4"]["gamma"]
    assert gamma.shape == (4, 16)
    # epoch 0: as initialized; epoch 1 onward: after that epoch's harvest
    assert torch.isnan(gamma[1:, [0, 5, 6]]).all() and torch.isfinite(gamma[0]).all()
    assert torch.isfinite(gamma[1:, [1, 2, 3, 4]]).all()

    summary = json.loads((out / "summary.json").read_text())["harvest"]
    assert summary["filters_removed"] == planted and summary["epochs_at_full_width"] == 1
    assert summary["params"]["final"] < summary["params"]["full_width"]
    assert summary["train_seconds_saved"] is not None

    evaluation = evaluate_run(out)  # a sweep's figures count the harvested filters as dead
    assert evaluation["filters_harvested"] == planted
    assert evaluation["layers"]["C4"]["features"] == 16
    assert evaluation["sparsity_gamma"] >= 100 * planted / 116
    full_width_conv = sum(m.weight.numel() for m in build_model_for(
        harvest_config(fashion_dir, tmp_path).resolved()).modules() if isinstance(m, nn.Conv2d))
    assert evaluation["params_pruned"] >= 100 * (1 - sum(
        m.weight.numel() for m in result.model.modules() if isinstance(m, nn.Conv2d))
        / full_width_conv) - 1e-9
    report = tmp_path / "analysis.json"  # so does `analyze RUN`
    assert main(["analyze", str(out), "--criterion", "gamma", "--json", str(report)]) == 0
    assert json.loads(report.read_text())["total"]["gamma"]["features"] == 116

    trained = load_trained(out)  # analyze / prune read the harvested architecture
    example = torch.randn(8, 1, 28, 28)
    pruned = prune_model(trained.model, example, check_data=[example])
    assert sum(len(layer.removed) for layer in pruned.layers) == 0  # nothing left to remove
    assert pruned.verified()


def test_a_killed_harvesting_run_resumes_to_the_same_end(fashion_dir, tmp_path, monkeypatch):
    """Killed after a harvest's checkpoint, inside a harvest (the model half edited), and by
    a real kill -9 inside a harvest: the run resumes to the uninterrupted run's end."""
    from implicit_sparsity.train import harvest

    config = harvest_config(fashion_dir, tmp_path, harvest_every=2)  # harvests at epoch 2
    straight = train(config, tmp_path / "straight", verbose=False)
    assert read_metrics(tmp_path / "straight")[1]["harvest"]["total_removed"] == 8

    def stop_after_the_harvest(epoch, model, metrics):
        if epoch == 2:
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        train(config, tmp_path / "after", callbacks=(stop_after_the_harvest,), verbose=False)
    assert load_checkpoint(tmp_path / "after" / CHECKPOINT)["harvest"]["channels"]["C4"] == \
        list(range(1, 5)) + list(range(7, 16))

    real = harvest.remove_dead_filters

    def interrupted(model, *args, **kwargs):
        real(model, *args, **kwargs)  # the model is edited, then the process stops
        raise KeyboardInterrupt
    monkeypatch.setattr(harvest, "remove_dead_filters", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train(config, tmp_path / "inside", verbose=False)
    monkeypatch.undo()
    assert [m["epoch"] for m in read_metrics(tmp_path / "inside")] == [1]

    script = (  # the same, with a real kill -9 in the middle of the surgery
        "import os, signal, sys\n"
        "from implicit_sparsity.train import harvest, train, TrainConfig\n"
        "real = harvest.remove_dead_filters\n"
        "def killed(model, *a, **k):\n"
        "    real(model, *a, **k)\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
        "harvest.remove_dead_filters = killed\n"
        "train(TrainConfig.from_dict(__import__('json').loads(sys.argv[1])), sys.argv[2],\n"
        "      verbose=False)\n")
    killed = subprocess.run([sys.executable, "-c", script, json.dumps(config.to_dict()),
                             str(tmp_path / "killed")], capture_output=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr.decode()[-500:]

    def strip(ms):
        return [{k: v for k, v in m.items() if "second" not in k and k != "harvest"}
                | {"harvest": {k: v for k, v in m.get("harvest", {}).items() if k != "seconds"}}
                for m in ms]
    for name in ("after", "inside", "killed"):
        resumed = train(config, tmp_path / name, verbose=False)
        for key, value in straight.model.state_dict().items():
            assert torch.equal(value, resumed.model.state_dict()[key]), (name, key)
        assert strip(straight.metrics) == strip(resumed.metrics), name
    assert os.path.exists(tmp_path / "killed" / "summary.json")


def test_where_harvesting_cannot_apply_it_says_so(fashion_dir, tmp_path):
    with pytest.raises(ConfigError, match="harvest_every must be >= 0"):
        TrainConfig(harvest_every=-1).validate()
    with pytest.raises(ConfigError, match="harvest_criterion must be one of"):
        TrainConfig(harvest_every=1, harvest_criterion="norm").validate()
    with pytest.raises(ConfigError, match="not both"):
        TrainConfig(harvest_every=1, recycle_every=10).validate()
    config = TrainConfig(data_dir=str(fashion_dir), width="0.0625", epochs=[1],
                         batch_size=40, harvest_every=1)
    with pytest.raises(PackingError, match="harvests while training"):
        train_packed([config, TrainConfig(**{**config.to_dict(), "seed": 1})],
                     [tmp_path / "a", tmp_path / "b"], verbose=False)

    class Data:  # what make_harvester reads of a data set
        def train_eval_batches(self, size):
            return iter([(torch.randn(size, 3, 8, 8), torch.zeros(size))])
    with pytest.raises(ConfigError, match="one process"):
        make_harvester(config.resolved(), basicnet(dtype=torch.float32), Data(), 2, None, print)
    said = []
    no_bn = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(144, 2))
    assert make_harvester(config.resolved(), no_bn, Data(), 1, None, said.append) is None
    assert len(said) == 1 and "training unharvested" in said[0] and "BatchNorm" in said[0]


def test_your_own_loop_harvests_with_the_monitor_recording_the_original_widths(tmp_path):
    """A user's loop: a torch optimizer, the harvest every epoch, the monitor beside it."""
    from implicit_sparsity import Harvester, SparsityMonitor

    model = basicnet(dtype=torch.float32)
    planted = plant(model)
    temperature = nn.Parameter(torch.ones(()))  # the optimizer's, not the model's
    optimizer = torch.optim.AdamW(list(model.parameters()) + [temperature], lr=1e-3,
                                  weight_decay=0.05)
    images = torch.randn(64, 1, 28, 28)
    labels = torch.randint(0, 10, (64,))
    harvester = Harvester(model, images[:32])
    monitor = SparsityMonitor(tmp_path / "log", harvester=harvester, tensorboard=False)
    for epoch in (1, 2):
        for i in range(0, 64, 16):
            optimizer.zero_grad()
            F.cross_entropy(model(images[i:i + 16]) / temperature,
                            labels[i:i + 16]).backward()
            optimizer.step()
        record = harvester.harvest(model, optimizer, epoch)
        assert record.refused is None
        monitor(epoch, model)
    assert sum(len(r["removed"].get("C4", [])) for r in harvester.records) == 3
    assert sum(r["total_removed"] for r in harvester.records) == planted
    assert model.features[5].conv.weight.shape[0] == 29  # width 0.125: C4 has 32 filters
    assert optimizer.state[model.features[5].conv.weight]["exp_avg"].shape == (29, 16, 3, 3)
    assert optimizer.param_groups[0]["params"][-1] is temperature
    assert optimizer.state[temperature]["step"] == 8
    gamma = load_bn_history(tmp_path / "log")["C4"]["gamma"]
    assert gamma.shape == (2, 32) and torch.isnan(gamma[:, [0, 5, 6]]).all()


def test_a_spec_can_ask_for_it_and_its_harvesting_runs_are_not_packed(tmp_path, fashion_dir):
    from implicit_sparsity.study.spec import load_spec
    from implicit_sparsity.train.packed import packable

    path = tmp_path / "harvest.yaml"
    path.write_text(
        "name: harvest\ntitle: harvest or not\n"
        f"base: {{model: basicnet, dataset: fashion-mnist, data_dir: {fashion_dir}, "
        "width: '0.0625', epochs: [2], batch_size: 40}\n"
        "variants:\n  - {harvest_every: 1}\n  - {harvest_every: 0}\nseeds: [0]\n"
        "table: {rows: [harvest_every], columns: [], values: [test_error, filters_harvested]}\n")
    runs = load_spec(path).expand()
    assert [r.config.harvest_every for r in runs] == [1, 0]
    assert runs[0].key != runs[1].key
    assert not packable(runs[0].config) and packable(runs[1].config)


@pytest.mark.parametrize(("name", "reason"), [
    ("adafactor", "a factored moment"), ("muon", "Muon keeps its own 2-D copies"),
    ("adamw-schedulefree", "schedule-free optimizer keeps iterates")])
def test_an_optimizer_whose_state_cannot_follow_refuses_the_harvest(name, reason):
    """Each refuses in one line, and the model keeps its own parameters."""
    model = basicnet()
    plant(model)
    x, y = torch.randn(48, 1, 28, 28, dtype=torch.float64), torch.randint(0, 10, (48,))
    lr = defaults.OPTIMIZER_DEFAULTS[name]["lr"]
    opt = build_optimizer(name, param_groups(model, lr, 1.0, 1.0),
                          resolve_hyperparameters(name, {}))
    set_mode(opt, training=True)
    step(model, opt, Regularizer("l2", 1e-3, list(model.parameters())), x, y)
    set_mode(opt, training=False)
    before = [id(p) for p in model.parameters()]
    shapes = [p.shape for p in model.parameters()]
    record = Harvester(model, x[:32]).harvest(model, opt, epoch=1)
    assert record.total_removed == 0 and reason in record.refused
    assert [id(p) for p in model.parameters()] == before
    assert [p.shape for p in model.parameters()] == shapes
