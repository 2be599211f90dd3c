"""Muon (torch's, on the hidden matrices, AdamW on the rest) and schedule-free AdamW: their
update rules by hand, their decoupled decay, their place in training (resumption, the
evaluation point, what they refuse)."""

import copy
import math

import pytest
import torch
from torch import nn

from implicit_sparsity import defaults
from implicit_sparsity.errors import ConfigError
from implicit_sparsity.optim import (Regularizer, StepSchedule, build_optimizer,
                                     decoupled_rates, param_groups, recompute_bn_statistics,
                                     regularized_step, resolve_hyperparameters)
from implicit_sparsity.optim.muon import Float32Muon, MuonWithAdamW, newton_schulz
from implicit_sparsity.train import TrainConfig, load_checkpoint, read_metrics
from implicit_sparsity.io.run_dir import CHECKPOINT
from resuming import assert_same_weights, train_straight_and_resumed

#: Newton-Schulz runs in bfloat16 (torch's Muon): 8 bits of mantissa, relative rounding
#: 2^-8 per operation; 5 quintic iterations of a few products each leave well under 5% of
#: the update's size (the update itself is O(1), so 0.05 absolute)
BF16_UPDATE_TOLERANCE = 0.05
#: The same iteration in float32 (rounding 2^-24 an operation): measured against float64 it
#: is off by about 1e-6 of the update's size; 1e-5 leaves a margin and still fails bfloat16
FLOAT32_UPDATE_TOLERANCE = 1e-5


def cnn() -> nn.Sequential:
    """Input conv, two hidden convs, a head: Muon should take exactly the two hidden."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.Conv2d(4, 6, 3), nn.BatchNorm2d(6), nn.ReLU(),
                         nn.Conv2d(6, 6, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(6, 3))


def muon(model, lr=0.02, **hyper):
    return build_optimizer("muon", param_groups(model, lr),
                           resolve_hyperparameters("muon", hyper))


def quintic(s: float, steps: int = 5) -> float:
    """Newton-Schulz on one singular value s: s <- a s + b s^3 + c s^5 (Muon's a, b, c)."""
    a, b, c = 3.4445, -4.775, 2.0315
    for _ in range(steps):
        s = a * s + b * s ** 3 + c * s ** 5
    return s


@pytest.mark.parametrize("ns_dtype,adjust_lr_fn,rate,tolerance", [
    ("bfloat16", "original", 1.0, BF16_UPDATE_TOLERANCE),
    ("float32", "original", 1.0, FLOAT32_UPDATE_TOLERANCE),
    ("float32", "match_rms_adamw", 0.2 * 3.0, FLOAT32_UPDATE_TOLERANCE)])
def test_muon_orthogonalizes_the_momentum_of_a_hidden_filter_bank_by_hand(
        ns_dtype, adjust_lr_fn, rate, tolerance):
    """A hidden conv's gradient 0.3 * Q, Q with orthonormal rows (2 filters x 9 taps): the
    Nesterov momentum of a constant gradient points along Q, its Frobenius normalization
    gives singular values 1/sqrt(2), each goes through the quintic 5 times, and the
    rate is lr * sqrt(max(1, 2/9)) = lr (Moonshot's match_rms_adamw: lr * 0.2 sqrt(max(2,
    9)) = 0.6 lr). Two steps (the second at lr/10): theta0 - 1.1 rate q5(1/sqrt 2) Q; plain
    momentum SGD would move by 0.3 * ... instead."""
    model = nn.Sequential(nn.Conv2d(1, 1, 1), nn.Conv2d(1, 2, 3), nn.Linear(1, 1))
    hidden = model[1].weight
    q = torch.zeros(2, 9)
    q[0, 0], q[1, 4] = 1.0, 1.0
    optimizer = muon(model, ns_dtype=ns_dtype, adjust_lr_fn=adjust_lr_fn)
    start = hidden.detach().clone()
    for factor in (1.0, 0.1):
        for group in optimizer.param_groups:
            group["lr"] = group["base_lr"] * factor
        optimizer.zero_grad()
        for p in model.parameters():
            p.grad = torch.zeros_like(p)
        hidden.grad = 0.3 * q.reshape(2, 1, 3, 3)
        optimizer.step()
    moved = (start - hidden.detach()).reshape(2, 9)
    expected = 1.1 * 0.02 * rate * quintic(1 / math.sqrt(2)) * q
    torch.testing.assert_close(moved, expected, atol=tolerance * 0.02, rtol=0)
    assert not torch.allclose(moved, 1.1 * 0.02 * rate * 0.3 * q, atol=tolerance * 0.02)


def test_newton_schulz_is_torchs_iteration_and_float32_is_float64_up_to_its_rounding():
    """In bfloat16 the toolkit's Newton-Schulz is torch's Muon's to the bit (tall and wide
    matrices); in float32 it is the float64 iteration within FLOAT32_UPDATE_TOLERANCE, and
    bfloat16 is not (its error is 1e-3 or more)."""
    from torch.optim._muon import _zeropower_via_newtonschulz
    coefficients, generator = (3.4445, -4.775, 2.0315), torch.Generator().manual_seed(0)
    for shape in ((6, 36), (12, 4)):
        g = torch.randn(shape, generator=generator)
        torch.testing.assert_close(newton_schulz(g, coefficients, 5, 1e-7, torch.bfloat16),
                                   _zeropower_via_newtonschulz(g, coefficients, 5, 1e-7),
                                   atol=0, rtol=0)
        exact = newton_schulz(g.double(), coefficients, 5, 1e-7, torch.float64)
        in_float32 = newton_schulz(g, coefficients, 5, 1e-7, torch.float32)
        assert in_float32.dtype == torch.float32
        assert (in_float32.double() - exact).abs().max() < FLOAT32_UPDATE_TOLERANCE
        in_bfloat16 = newton_schulz(g, coefficients, 5, 1e-7, torch.bfloat16)
        assert (in_bfloat16.double() - exact).abs().max() > 1e-3


def test_float32_muon_keeps_torchs_state_so_checkpoints_load_either_way():
    """A bfloat16 run's optimizer state loads into a float32 one (the same momentum buffers),
    and the two then step within bfloat16's tolerance of each other."""
    model, twin = cnn(), cnn()
    in_bfloat16, in_float32 = muon(model), muon(twin, ns_dtype="float32")
    assert isinstance(in_float32.muon, Float32Muon)
    x, y = torch.randn(8, 1, 9, 9), torch.randint(0, 3, (8,))
    model.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    in_bfloat16.step()
    twin.load_state_dict(model.state_dict())
    in_float32.load_state_dict(copy.deepcopy(in_bfloat16.state_dict()))
    for net, opt in ((model, in_bfloat16), (twin, in_float32)):
        net.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    for p, q in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(p, q, atol=BF16_UPDATE_TOLERANCE * 0.02, rtol=0)
    assert any(not torch.equal(p, q) for p, q in zip(model.parameters(), twin.parameters()))


@pytest.mark.parametrize("hyper,message", [
    ({"ns_dtype": "float16"}, "ns_dtype must be one of bfloat16, float32"),
    ({"ns_dtype": 32}, "expected a name"),
    ({"adjust_lr_fn": "spectral"}, "adjust_lr_fn must be one of original, match_rms_adamw")])
def test_muon_names_its_choices_on_a_bad_one(hyper, message):
    with pytest.raises(ConfigError, match=message):
        muon(cnn(), **hyper)


def test_muon_takes_the_hidden_matrices_and_adamw_the_rest_exactly_as_torch_does():
    """Against torch's own Muon on 2-D copies of the hidden convs and torch's AdamW (3e-4,
    betas 0.9 / 0.95) on the rest, three steps on the same batch: equal to the bit."""
    model, twin = cnn(), cnn()
    optimizer = muon(model)
    hidden = [twin[3].weight, twin[6].weight]
    copies = [w.detach().reshape(w.shape[0], -1).clone().requires_grad_(True) for w in hidden]
    rest = [p for p in twin.parameters() if all(p is not w for w in hidden)]
    torch_muon = torch.optim.Muon(copies, lr=0.02, weight_decay=0.0, momentum=0.95)
    torch_adamw = torch.optim.AdamW(rest, lr=3e-4, betas=(0.9, 0.95), weight_decay=0.0)
    x, y = torch.randn(8, 1, 9, 9), torch.randint(0, 3, (8,))
    for _ in range(3):
        for net, opt in ((model, optimizer), (twin, None)):
            net.zero_grad()
            nn.functional.cross_entropy(net(x), y).backward()
            if opt is not None:
                opt.step()
        for w, c in zip(hidden, copies):
            c.grad = w.grad.reshape(c.shape).clone()
        torch_muon.step()
        torch_adamw.step()
        with torch.no_grad():
            for w, c in zip(hidden, copies):
                w.copy_(c.reshape(w.shape))
    for (name, p), q in zip(model.named_parameters(), twin.parameters()):
        assert torch.equal(p, q), name
    assert sum(len(g["params"]) for g in optimizer.muon.param_groups) == 2


def test_decoupled_decay_scales_each_parameter_by_its_own_optimizers_rate():
    """With zero gradients both updates are 0: one step leaves theta * (1 - rate * lambda),
    the rate Muon's (the run's 0.02) for the hidden convs and AdamW's 3e-4 for the rest."""
    model = cnn()
    optimizer = muon(model)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    regularizer = Regularizer("decoupled", 0.1, model.parameters(),
                              lr=decoupled_rates(optimizer, 0.02))
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    regularized_step(optimizer, regularizer, 1.0)
    for name, p in model.named_parameters():
        rate = 0.02 if name in ("3.weight", "6.weight") else 3e-4
        torch.testing.assert_close(p.detach(), before[name] * (1 - rate * 0.1), rtol=1e-6,
                                   atol=0)


def test_muon_state_round_trips_through_its_state_dict():
    """A run resumed from a checkpoint continues exactly: the inner Muon and AdamW states
    (momentum buffers, moments, step counts) are in the state dict, and the schedule's
    rates still reach the inner optimizers after loading (which replaces their groups)."""
    model = cnn()
    optimizer = muon(model)
    x, y = torch.randn(8, 1, 9, 9), torch.randint(0, 3, (8,))

    def step(net, opt):
        net.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    for _ in range(2):
        step(model, optimizer)
    twin = copy.deepcopy(model)
    twin_optimizer = muon(twin)
    twin_optimizer.load_state_dict(copy.deepcopy(optimizer.state_dict()))
    for opt in (optimizer, twin_optimizer):  # the schedule's decay reaches both inner ones
        for group in opt.param_groups:
            group["lr"] = group["base_lr"] * 0.1
    step(model, optimizer)
    step(twin, twin_optimizer)
    for p, q in zip(model.parameters(), twin.parameters()):
        assert torch.equal(p, q)
    assert twin_optimizer.muon.param_groups[0]["lr"] == pytest.approx(0.002)
    assert twin_optimizer.adamw.param_groups[0]["lr"] == pytest.approx(3e-5)


def test_muon_refuses_its_own_weight_decay():
    with pytest.raises(ConfigError, match="not the optimizer's weight_decay"):
        MuonWithAdamW(cnn().parameters(), weight_decay=0.1)


def tiny(data_dir, **overrides):
    values = dict(model="basicnet", width="0.0625", dataset="fashion-mnist",
                  data_dir=str(data_dir), epochs=[2], batch_size=20, train_subset=None,
                  test_subset=None, eval_batch_size=60, seed=1)
    values.update(overrides)
    return TrainConfig(**values)


@pytest.mark.parametrize(("optimizer", "regularizer"),
                         [("muon", "decoupled"), ("adamw-schedulefree", "decoupled")])
def test_muon_and_schedule_free_train_and_resume_to_the_same_end(fashion_dir, tmp_path,
                                                                optimizer, regularizer):
    """Killed after epoch 1 and resumed, a run ends where the straight run ends (bit for
    bit): the optimizers' states are saved whole, and schedule-free's model is saved,
    measured and resumed at its evaluation point."""
    config = tiny(fashion_dir, optimizer=optimizer, regularizer=regularizer,
                  lam=0.05 if regularizer == "decoupled" else 1e-3)
    straight, resumed = train_straight_and_resumed(config, tmp_path)
    assert_same_weights(straight, resumed)
    metrics = read_metrics(tmp_path / "straight")
    assert all(math.isfinite(m["train_loss"]) for m in metrics)
    assert metrics[-1]["train_loss"] < metrics[0]["train_loss"] * 1.5
    state = load_checkpoint(tmp_path / "straight" / CHECKPOINT)
    if optimizer == "adamw-schedulefree":  # saved at x, not at the gradient point y
        assert state["optimizer"]["param_groups"][0]["train_mode"] is False
        assert state["optimizer"]["param_groups"][0]["weight_decay"] == (
            0.05 if regularizer == "decoupled" else 0.0)
        # ... with BatchNorm statistics of x: the same recomputation at x gives them again
        from implicit_sparsity.train.loop import build_for_config

        data, _ = build_for_config(config.resolved(), torch.device("cpu"))
        again = copy.deepcopy(straight.model)
        batches = list(data.train_eval_batches(config.batch_size))
        assert recompute_bn_statistics(again, batches[:defaults.SCHEDULE_FREE_BN_BATCHES]) \
            == min(len(batches), defaults.SCHEDULE_FREE_BN_BATCHES)
        for (key, value), (_, kept) in zip(again.state_dict().items(),
                                           straight.model.state_dict().items()):
            assert torch.equal(value, kept), key


def test_bn_statistics_are_recomputed_as_the_average_over_the_batches_by_hand():
    """Running mean / variance = the plain average over the batches of each batch's mean /
    unbiased variance of the BatchNorm's input (in train mode, each BatchNorm normalizing by
    its batch); momenta, modes and parameters are left as they were."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3, momentum=0.3), nn.ReLU(),
                          nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU()).double()
    for bn in (model[1], model[4]):
        bn.running_mean.fill_(7.0)
        bn.running_var.fill_(9.0)
    model.eval()
    batches = [(torch.randn(n, 2, 8, 8, dtype=torch.float64), None) for n in (8, 8, 5)]
    inputs = {1: [], 4: []}
    reference = copy.deepcopy(model).train()
    for i in inputs:
        reference[i].register_forward_pre_hook(lambda m, a, i=i: inputs[i].append(a[0]))
    with torch.no_grad():
        for x, _ in batches:
            reference(x)
    weights = [p.clone() for p in model.parameters()]
    assert recompute_bn_statistics(model, batches) == 3
    for i, seen in inputs.items():
        mean = torch.stack([t.mean(dim=(0, 2, 3)) for t in seen]).mean(0)
        var = torch.stack([t.transpose(0, 1).flatten(1).var(1) for t in seen]).mean(0)
        torch.testing.assert_close(model[i].running_mean, mean, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(model[i].running_var, var, rtol=1e-12, atol=1e-12)
    assert model[1].momentum == 0.3 and model[4].momentum == 0.1
    assert not any(m.training for m in model.modules())
    assert all(torch.equal(a, b) for a, b in zip(weights, model.parameters()))


@pytest.mark.parametrize(("change", "message"), [
    ({"optimizer": "adamw-schedulefree", "epochs": [2, 1]}, "give epochs as one stage"),
    ({"optimizer": "adamw-schedulefree", "epochs": None}, "give epochs as one stage"),
    ({"optimizer": "adamw-schedulefree", "regularizer": "wd"}, "paper's WD"),
    ({"optimizer": "muon", "harvest_every": 1}, "cannot follow a harvest"),
    ({"optimizer": "adamw-schedulefree", "recycle_every": 10}, "cannot follow a harvest"),
    ({"optimizer": "muon", "optimizer_args": {"weight_decay": 0.1}}, "no hyper-parameter"),
])
def test_what_they_cannot_do_is_refused_before_any_work(change, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig(**{"optimizer": "adam", "epochs": [2], **change}).validate()


def test_schedule_free_takes_a_constant_rate_over_the_stages_of_a_schedule():
    """lr_decay 1 keeps the stages (the same iterations as the other runs of a spec) at one
    rate; the rate stays the base rate in every epoch."""
    config = TrainConfig(optimizer="adamw-schedulefree", epochs=[2, 1], lr_decay=1.0)
    config.validate()
    assert StepSchedule((2, 1), 1.0).factor(2) == 1.0


def test_their_defaults_are_their_authors():
    assert defaults.OPTIMIZER_DEFAULTS["muon"]["lr"] == 0.02
    assert resolve_hyperparameters("muon")["adamw_betas"] == (0.9, 0.95)
    assert resolve_hyperparameters("adamw-schedulefree")["warmup_steps"] == 0
    assert defaults.OPTIMIZER_DEFAULTS["adamw-schedulefree"]["lr"] == 2.5e-3
