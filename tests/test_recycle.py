"""Recycling dormant units (ReDo) while training: what is re-initialized, what is zeroed,
that recycling a dead unit leaves the network's function exactly as it was, and the
training option end to end."""

import json

import pytest
import torch
import torch.nn.functional as F

from implicit_sparsity.errors import ConfigError
from implicit_sparsity.models import build_model
from implicit_sparsity.models.blocks import feature_layers
from implicit_sparsity.train import TrainConfig, train
from implicit_sparsity.train.recycle import Recycler


def block(model, name):
    return dict(feature_layers(model))[name]


def adam_model(seed=0):
    torch.manual_seed(seed)
    model = build_model("basicnet", in_channels=1, num_classes=10, width=0.125).double()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.randn(8, 1, 28, 28, dtype=torch.float64)
    y = torch.randint(0, 10, (8,))
    F.cross_entropy(model(x), y).backward()
    optimizer.step()  # every moment non-zero
    return model, optimizer, x


def test_recycling_a_dead_unit_changes_no_output_and_resets_its_weights_and_moments():
    model, optimizer, x = adam_model()
    c2, c3 = block(model, "C2"), block(model, "C3")  # C2 feeds C3 (no pool between)
    assert c3.conv.in_channels == c2.conv.out_channels
    dead = [1, 4]
    with torch.no_grad():
        c2.bn.weight[dead] = 0.0
        c2.bn.bias[dead] = -0.5  # ReLU(-0.5) = 0 everywhere: a dead unit
    model.eval()
    with torch.no_grad():
        before = model(x)
    old_filter = c2.conv.weight.detach().clone()
    recycler = Recycler(model, optimizer, every=1, tau=0.0)
    done = recycler.recycle(x)
    # the planted units score 0 (so may units of other layers that no sample of this batch
    # of 8 switches on at initialization: with tau 0 they are dead on x, so outputs hold)
    assert done["C2"] == 2
    model.eval()
    with torch.no_grad():
        after = model(x)
    assert torch.equal(before, after)  # float64, exactly: the unit's outgoing weights are 0
    # incoming weights drawn afresh, gamma / beta back to their initial values
    assert not torch.equal(c2.conv.weight[dead], old_filter[dead])
    assert torch.equal(c2.conv.weight[[0, 2]], old_filter[[0, 2]])
    assert c2.bn.weight[dead].tolist() == [1.0, 1.0] and c2.bn.bias[dead].tolist() == [0.0, 0.0]
    assert c2.bn.running_var[dead].tolist() == [1.0, 1.0]
    # outgoing weights zero, the others untouched
    assert torch.count_nonzero(c3.conv.weight[:, dead]) == 0
    assert torch.count_nonzero(c3.conv.weight[:, [0, 2]]) > 0
    # the optimizer's moments of exactly those slices are zero
    for param, dim in ((c2.conv.weight, 0), (c2.bn.weight, 0), (c3.conv.weight, 1)):
        state = optimizer.state[param]
        for key in ("exp_avg", "exp_avg_sq"):
            reset = state[key].index_select(dim, torch.tensor(dead))
            kept = state[key].index_select(dim, torch.tensor([0, 2]))
            assert torch.count_nonzero(reset) == 0 and torch.count_nonzero(kept) > 0, key
    assert recycler.log.total == sum(done.values()) and recycler.log.checks == 1


def test_the_last_layer_feeds_the_classifier_after_global_pooling():
    model, optimizer, x = adam_model()
    last = block(model, "C7")
    with torch.no_grad():
        last.bn.weight[0] = 0.0
        last.bn.bias[0] = -1.0
    model.eval()
    with torch.no_grad():
        before = model(x)
    done = Recycler(model, optimizer, every=1, tau=0.0).recycle(x)
    assert done["C7"] == 1
    fc = model.classifier[0]
    assert torch.count_nonzero(fc.weight[:, 0]) == 0
    with torch.no_grad():
        assert torch.equal(model.eval()(x), before)


def test_dormant_by_tau_and_every_n_steps():
    model, optimizer, x = adam_model()
    c4 = block(model, "C4")
    with torch.no_grad():  # a unit alive but far weaker than its layer's mean
        c4.bn.weight[2] = 1e-4
        c4.bn.bias[2] = 1e-4
    recycler = Recycler(model, optimizer, every=3, tau=0.025)
    assert recycler.step(x) == {} and recycler.step(x) == {}
    assert recycler.step(x).get("C4", 0) >= 1  # the third step checks
    assert c4.bn.weight[2].item() == 1.0


def test_same_seed_and_step_draw_the_same_weights():
    drawn = []
    for _ in range(2):
        model, optimizer, x = adam_model()
        with torch.no_grad():
            block(model, "C2").bn.weight[3] = 0.0
            block(model, "C2").bn.bias[3] = -1.0
        recycler = Recycler(model, optimizer, every=1, tau=0.0, seed=5)
        recycler.steps = 41
        recycler.step(x)
        drawn.append(block(model, "C2").conv.weight[3].detach().clone())
    assert torch.equal(*drawn)


def test_training_with_recycling_logs_it_and_bad_values_are_refused(fashion_dir, tmp_path):
    config = TrainConfig(data_dir=str(fashion_dir), width="0.0625", epochs=[2],
                         batch_size=20, lam=5e-3, recycle_every=2, recycle_tau=0.1)
    result = train(config, tmp_path / "run", verbose=False)
    assert all("recycled" in m for m in result.metrics)
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert all("recycled" in json.loads(line) for line in lines)
    for bad in ({"recycle_every": -1}, {"recycle_tau": 1.0}, {"recycle_tau": float("nan")}):
        with pytest.raises(ConfigError, match="recycle"):
            TrainConfig(data_dir=str(fashion_dir), **bad).validate()
    # a run without recycling keeps the key it had before the option existed
    from implicit_sparsity.train.config import key_fields
    assert "recycle_every" not in key_fields(TrainConfig())
