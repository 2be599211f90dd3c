"""Packed runs (torch.func) compute what single runs compute, run by run."""

import pytest
import torch
import torch.nn.functional as F

from implicit_sparsity.defaults import REGULARIZERS
from implicit_sparsity.errors import ConfigError
from implicit_sparsity.models import build_model
from implicit_sparsity.optim import (OPTIMIZERS, Regularizer, add_l1_gamma_gradient,
                                     apply_schedule, build_optimizer, param_groups,
                                     regularized_step)
from implicit_sparsity.train import TrainConfig
from implicit_sparsity.train.capture import relative_difference
from implicit_sparsity.train.loop import regularized_params
from implicit_sparsity.train.packed import UNPACKABLE_OPTIMIZERS, PackedModels, packable

#: every optimizer x regularizer, with BN excluded from regularization, a BN learning-rate
#: scale or Network Slimming's L1 on gamma here and there
CONFIGS = [TrainConfig(optimizer=o, regularizer=r, lam=(1e-2, 5e-3, 1e-3)[i % 3], seed=i,
                       regularize_bn=i % 4 != 3, gamma_lr_scale=0.1 if i % 5 == 1 else 1.0,
                       l1_gamma=1e-3 if i % 6 == 2 else 0.0)
           for i, (o, r) in enumerate(
               # every optimizer (its regularizer in turn), and every regularizer with Adam:
               # the two act independently, so their cross product adds no case
               [(o, REGULARIZERS[j % len(REGULARIZERS)]) for j, o in enumerate(
                   o for o in OPTIMIZERS if o not in UNPACKABLE_OPTIMIZERS)]
               + [("adam", r) for r in REGULARIZERS if r != "l2"])]


#: one optimizer and rate, other regularizers, lambdas, seeds and L1: one shared optimizer step
SHARED = [TrainConfig(optimizer="adam", regularizer="l2", lam=1e-2, seed=0),
          TrainConfig(optimizer="adam", regularizer="wd", lam=5e-3, seed=1, l1_gamma=1e-3),
          TrainConfig(optimizer="adam", regularizer="none", seed=2, regularize_bn=False)]


def fresh_models(configs, dtype=torch.float32):
    models = []
    for config in configs:
        torch.manual_seed(config.seed)
        models.append(build_model("basicnet", in_channels=1, num_classes=10,
                                  width=0.0625).to(dtype))
    return models


#: Packed and single runs sum the same terms in another order (vmap's grouped convolutions),
#: so they differ by rounding: in float64 by ~1e-16 of the terms summed. Adam-like updates
#: divide a gradient by sqrt(v) + eps (eps = 1e-8): where the gradient is a near-cancelling
#: sum, its rounding is magnified by up to |terms| / eps ~ 1e8, then scaled by lr (<= 0.1)
#: over 4 steps, so weights may differ by ~4 * 0.1 * 1e8 * 1e-16 ~ 4e-9 of their scale. In
#: float32 the same bound is ~4e-1, which is why an equivalence test must run in float64.
PACKED_TOLERANCE = 1e-8


def neighbour_blocks(configs) -> int:
    """Maximal runs of neighbours with one optimizer and one gamma lr scale (worked out from
    the list, not from the packing code): each shares one optimizer step."""
    keys = [(c.optimizer, c.gamma_lr_scale) for c in configs]
    return 1 + sum(a != b for a, b in zip(keys, keys[1:]))


@pytest.mark.parametrize("configs, optimizers", [(CONFIGS, neighbour_blocks(CONFIGS)),
                                                 (SHARED, 1)],
                         ids=["every-optimizer-x-regularizer", "shared-optimizer"])
def test_packed_steps_equal_single_runs_run_by_run(configs, optimizers):
    torch.manual_seed(0)
    batches = [(torch.randn(len(configs), 6, 1, 28, 28, dtype=torch.float64),
                torch.randint(0, 10, (len(configs), 6))) for _ in range(4)]
    factors = [1.0, 1.0, 0.1, 0.1]
    packed = PackedModels(fresh_models(configs, torch.float64), configs)
    # neighbours of one optimizer and rate share a step: in CONFIGS the gamma lr scale
    # (every fifth run) splits some optimizers' runs
    assert len(packed.optimizers) == optimizers
    for (x, y), factor in zip(batches, factors):
        packed.set_schedule(factor)
        packed.step(x, y, [factor] * len(configs))

    worst = 0.0
    for k, (model, config) in enumerate(zip(fresh_models(configs, torch.float64), configs)):
        config = config.resolved()
        optimizer = build_optimizer(config.optimizer, param_groups(
            model, config.lr, config.gamma_lr_scale, config.beta_lr_scale), config.optimizer_args)
        regularizer = Regularizer(config.regularizer, config.lam,
                                  regularized_params(model, config.regularize_bn), lr=config.lr)
        model.train()
        for (x, y), factor in zip(batches, factors):
            apply_schedule(optimizer, config.lr, factor)
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(model(x[k]), y[k]).backward()
            add_l1_gamma_gradient(model, config.l1_gamma)
            regularized_step(optimizer, regularizer, factor)
        single = model.state_dict()
        mine = packed.state_dict(k)
        assert list(mine) == list(single)
        for key, value in single.items():
            assert mine[key].dtype == value.dtype
            difference = relative_difference(mine[key], value)
            worst = max(worst, difference)
            assert difference <= PACKED_TOLERANCE, (configs[k].optimizer, key, difference)
        # the optimizer state has the single run's layout and values: a checkpoint of either
        # resumes both
        mine, single = packed.optimizer_state_dict(k), optimizer.state_dict()
        assert mine["param_groups"] == single["param_groups"]
        assert mine["state"].keys() == single["state"].keys()
        for i, entry in single["state"].items():
            for name, value in entry.items():
                if torch.is_tensor(value):
                    assert relative_difference(mine["state"][i][name], value) \
                        <= PACKED_TOLERANCE, name
    print(f"worst relative difference packed vs single: {worst:.1e}")


def test_a_shared_optimizer_resumes_from_the_runs_own_states():
    torch.manual_seed(0)
    batches = [(torch.randn(3, 6, 1, 28, 28), torch.randint(0, 10, (3, 6))) for _ in range(4)]
    straight = PackedModels(fresh_models(SHARED), SHARED)
    for x, y in batches:
        straight.step(x, y, [1.0] * 3)
    first = PackedModels(fresh_models(SHARED), SHARED)
    for x, y in batches[:2]:
        first.step(x, y, [1.0] * 3)
    models = fresh_models(SHARED)
    for k, model in enumerate(models):
        model.load_state_dict(first.state_dict(k))
    resumed = PackedModels(models, SHARED)
    resumed.load_optimizer_state_dicts([first.optimizer_state_dict(k) for k in range(3)])
    for x, y in batches[2:]:
        resumed.step(x, y, [1.0] * 3)
    for k in range(3):
        for key, value in straight.state_dict(k).items():
            assert torch.equal(resumed.state_dict(k)[key], value), key


def test_neighbouring_runs_of_one_optimizer_form_segments():
    from implicit_sparsity.train.packed import contiguous_segments

    assert contiguous_segments(["a", "a", "b", "a"]) == [(0, 2), (2, 3), (3, 4)]
    assert contiguous_segments([1]) == [(0, 1)]
    assert contiguous_segments([]) == []


def test_packing_refuses_mixed_architectures_and_bf16():
    torch.manual_seed(0)
    small = build_model("basicnet", in_channels=1, num_classes=10, width=0.0625)
    wide = build_model("basicnet", in_channels=1, num_classes=10, width=0.125)
    with pytest.raises(ConfigError, match="one architecture"):
        PackedModels([small, wide], CONFIGS[:2])
    with pytest.raises(ConfigError, match="in fp32 with the default memory layout"):
        PackedModels([small], [TrainConfig(precision="bf16")])


def test_sweeps_pack_compatible_runs_and_leave_the_others_alone():
    from implicit_sparsity.study.sweep import pack_jobs

    def job(name, **values):
        return (TrainConfig(**values).to_dict(), name, 1, None)

    jobs = [job("a", seed=0), job("b", seed=1, l1_gamma=1e-4), job("c", width="0.5"),
            job("d", seed=2, optimizer="sgd"), job("e", precision="bf16"),
            job("f", precision="bf16", seed=1), job("g", seed=3)]
    packs = [[j[1] for j in pack] for pack in pack_jobs(jobs, 3)]
    # Adam runs together (one shared optimizer step), SGD apart; bf16 runs one by one
    assert sorted(packs) == [["a", "b", "g"], ["c"], ["d"], ["e"], ["f"]]


def test_packed_training_writes_the_run_folders_of_single_runs(fashion_dir, tmp_path):
    from implicit_sparsity.train import load_checkpoint, read_metrics, train
    from implicit_sparsity.train.packed import train_packed

    common = dict(data_dir=str(fashion_dir), width="0.0625", epochs=[2, 1], crop_padding=2)
    configs = [TrainConfig(**common, optimizer="adam", lam=1e-3, seed=0),
               TrainConfig(**common, optimizer="sgd", regularizer="wd", lam=5e-4, seed=1)]
    packed = train_packed(configs, [tmp_path / "p0", tmp_path / "p1"], verbose=False)
    for k, config in enumerate(configs):
        single = train(config, tmp_path / f"s{k}", verbose=False)
        mine = load_checkpoint(tmp_path / f"p{k}" / "checkpoint.pt")["model"]
        # the same tensors; their values agree to float32 rounding only, which Adam and
        # SGD at lr 0.1 magnify over these steps (see PACKED_TOLERANCE): the computation's
        # equality is tested in float64 above
        assert {k: v.shape for k, v in mine.items()} == {
            k: v.shape for k, v in single.model.state_dict().items()}
        a, b = read_metrics(tmp_path / f"p{k}"), read_metrics(tmp_path / f"s{k}")
        assert [m["epoch"] for m in a] == [1, 2, 3]
        assert [m["train_samples"] for m in a] == [m["train_samples"] for m in b]
        for ma, mb in zip(a, b):
            # float32 drift only (the same order of magnitude; equality: float64, above)
            assert ma["train_loss"] == pytest.approx(mb["train_loss"], rel=5e-2)
            assert ma["test_error"] == pytest.approx(mb["test_error"], abs=2.0)
        assert (tmp_path / f"p{k}" / "summary.json").is_file()
        assert packed[k].metrics[-1]["packed_with"] == 2
    with pytest.raises(ConfigError, match="differ in width"):
        train_packed([configs[0], TrainConfig(**{**common, "width": "0.125"})],
                     [tmp_path / "x0", tmp_path / "x1"], verbose=False)


def test_packed_runs_at_different_epochs_are_refused(fashion_dir, tmp_path):
    from implicit_sparsity.train import train
    from implicit_sparsity.train.packed import train_packed

    common = dict(data_dir=str(fashion_dir), width="0.0625", epochs=[2])
    first = TrainConfig(**common, seed=0)

    def stop(epoch, model, metrics):
        raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        train(first, tmp_path / "a", callbacks=(stop,), verbose=False)  # at epoch 1
    with pytest.raises(ConfigError, match="same epoch"):
        train_packed([first, TrainConfig(**common, seed=1)], [tmp_path / "a", tmp_path / "b"],
                     verbose=False)


def test_packed_runs_killed_after_an_epoch_resume_to_the_same_end(fashion_dir, tmp_path,
                                                                   monkeypatch):
    from implicit_sparsity.train import load_checkpoint
    from implicit_sparsity.train import packed as loop  # where the packed trainer finds it
    from implicit_sparsity.train.packed import train_packed

    common = dict(data_dir=str(fashion_dir), width="0.0625", epochs=[1, 1], optimizer="adam")
    configs = [TrainConfig(**common, lam=1e-3, seed=0),
               TrainConfig(**common, regularizer="wd", lam=5e-4, seed=1)]
    straight = [tmp_path / "a0", tmp_path / "a1"]
    train_packed(configs, straight, verbose=False)

    write_epoch = loop.write_epoch

    def write_then_die(out, *args):
        write_epoch(out, *args)
        if out.name == "b1":  # the last run's epoch 1 is on disk
            raise KeyboardInterrupt

    killed = [tmp_path / "b0", tmp_path / "b1"]
    monkeypatch.setattr(loop, "write_epoch", write_then_die)
    with pytest.raises(KeyboardInterrupt):
        train_packed(configs, killed, verbose=False)
    monkeypatch.setattr(loop, "write_epoch", write_epoch)
    resumed = train_packed(configs, killed, verbose=False)
    assert [m["epoch"] for m in resumed[0].metrics] == [1, 2]
    for a, b in zip(straight, killed):
        end_a, end_b = load_checkpoint(a / "checkpoint.pt"), load_checkpoint(b / "checkpoint.pt")
        for key, value in end_a["model"].items():
            assert torch.equal(end_b["model"][key], value), key
        for i, entry in end_a["optimizer"]["state"].items():
            for name, value in entry.items():
                assert torch.equal(end_b["optimizer"]["state"][i][name], value), name


def test_adafactor_is_never_packed():
    """Its second moment is factored over a tensor's last two dimensions: a stacked
    BatchNorm vector [K, C] would be factored where the single run's [C] is not."""
    assert not packable(TrainConfig(optimizer="adafactor"))
    assert packable(TrainConfig(optimizer="lion")) and packable(TrainConfig(optimizer="adamw"))
