"""Bugs found in the structure review, each with the test that failed before its fix."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import write_fashion_mnist
from implicit_sparsity.cli import main
from implicit_sparsity.errors import ConfigError, PackingError
from implicit_sparsity.models import build_model
from implicit_sparsity.prune import prune_model
from implicit_sparsity.study import sweep


def write_class_folders(root, classes=("a", "b", "c"), per_class=2):
    for split in ("train", "val"):
        for name in classes:
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(per_class):
                pixels = np.full((8, 8, 3), 40 * i, dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


def test_a_class_subset_of_a_streamed_data_set_keeps_the_first_classes(tmp_path):
    from implicit_sparsity.data import load_dataset

    data = load_dataset("imagenet", write_class_folders(tmp_path / "imagenet"), classes=2,
                        num_workers=0)
    assert data.num_classes == 2
    assert sorted(set(np.asarray(data.train_labels).tolist())) == [0, 1]
    assert len(data.train_labels) == 4 and len(data.test_labels) == 4


def test_execute_packed_falls_back_only_when_runs_cannot_be_packed(monkeypatch, tmp_path):
    threads = torch.get_num_threads()  # execute_packed sets it: leave it as it is
    jobs = [({"seed": s}, str(tmp_path / f"r{s}"), threads, None) for s in (0, 1)]
    alone = []
    monkeypatch.setattr(sweep, "execute_run", lambda *job: alone.append(job[1]) or job[1])

    def cannot_pack(*args, **kwargs):
        raise PackingError("packed runs must resume from the same epoch")
    monkeypatch.setattr(sweep, "train_packed", cannot_pack)
    assert sweep.execute_packed(jobs) == [job[1] for job in jobs]  # each on its own
    assert alone == [job[1] for job in jobs]

    def bad_config(*args, **kwargs):
        raise ConfigError("train_subset 5,000 is more than the 200 images there are")
    monkeypatch.setattr(sweep, "train_packed", bad_config)
    with pytest.raises(ConfigError, match="more than the 200"):  # was swallowed
        sweep.execute_packed(jobs)


def test_packed_and_single_sweeps_give_each_worker_its_own_gpu(monkeypatch, tmp_path):
    made = []

    class Recorder:
        def __init__(self, workers, mp_context, initializer, initargs):
            made.append(initargs[1])

        def shutdown(self, wait=True, cancel_futures=False):
            pass
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(sweep, "ProcessPoolExecutor", Recorder)
    with sweep.worker_pool(3):
        pass
    queue = made[0]
    assert [queue.get() for _ in range(3)] == [0, 1, 0]

    # the packed branch goes through the same pool (it passed no GPUs: all on cuda:0)
    pools = []

    class InlinePool:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def submit(self, fn, *args):
            from concurrent.futures import Future

            future = Future()
            future.set_result(fn(*args))
            return future
    monkeypatch.setattr(sweep, "worker_pool", lambda workers: pools.append(workers) or
                        InlinePool())
    monkeypatch.setattr(sweep, "execute_packed", lambda group: [d for _, d, _, _ in group])
    from implicit_sparsity.study.spec import ExperimentSpec

    spec = ExperimentSpec(name="gpus", base={"width": "0.0625", "epochs": [1]},
                          variants=[{"lam": 1e-3}, {"lam": 2e-3}])
    sweep._run_sweep(spec, spec.expand(), tmp_path / "s", False, 2, None, "local", None, pack=2)
    assert pools == [1]


def test_compare_without_matplotlib_stops_before_training(tmp_path, capsys, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    fashion = write_fashion_mnist(tmp_path / "fashion", n_train=40, n_test=20)
    code = main(["compare", "--out", str(tmp_path / "cmp"), "--data-dir", str(fashion),
                 "--width", "0.0625", "--epochs", "1"])
    err = capsys.readouterr().err
    assert code == 2 and "pip install" in err and "matplotlib" in err, err
    assert not (tmp_path / "cmp").exists()


def test_prune_model_leaves_the_callers_model_as_it_was_and_times_nothing():
    torch.manual_seed(0)
    model = build_model("basicnet", in_channels=1, num_classes=10, width=0.0625)
    with torch.no_grad():
        model.features[0].bn.weight[:2] = 0.0
        model.features[0].bn.bias[:2] = -1.0
    model.train()
    model.features[0].bn.eval()  # a frozen BatchNorm inside a training model
    modes = {name: m.training for name, m in model.named_modules()}
    state = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(4, 1, 28, 28)
    result = prune_model(model, x, check_data=[x])
    assert {name: m.training for name, m in model.named_modules()} == modes
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert result.latency == []
    assert result.layers[0].filters_after == result.layers[0].filters_before - 2


def test_the_public_api_is_a_short_list_that_resolves():
    import implicit_sparsity
    from implicit_sparsity import TrainConfig, analyze, load_run, prune_model  # noqa: F401

    names = [n for n in implicit_sparsity.__all__ if n != "__version__"]
    assert 10 <= len(names) <= 16 and "train" not in names  # the subpackage's name
    for name in names:
        assert callable(getattr(implicit_sparsity, name)), name
    assert load_run.__name__ == "load_trained"
    with pytest.raises(AttributeError):
        implicit_sparsity.__getattr__("atomic_write_bytes")  # an internal: not re-exported


def test_the_config_fields_are_the_one_source_of_types_and_roles():
    """Types come from the annotations (the YAML reader and the CLI flags both use them);
    what a pack shares, what changes no result, what is left out of run keys come from the
    fields' metadata, and they are the sets earlier sweeps' keys were made with."""
    import dataclasses

    from implicit_sparsity.cli import build_parser
    from implicit_sparsity.train.config import (LATER_FIELDS_AT_DEFAULT, PACK_FIELDS,
                                                RESULT_NEUTRAL_FIELDS, TrainConfig, field_type)

    assert set(RESULT_NEUTRAL_FIELDS) == {"data_dir", "device", "eval_batch_size", "num_workers",
                                          "step_capture", "cudnn_benchmark"}
    assert LATER_FIELDS_AT_DEFAULT == {"flush_denormal": False, "class_subset": None,
                                       "recycle_every": 0, "recycle_tau": 0.025,
                                       "harvest_every": 0, "harvest_criterion": "gamma"}
    assert {"model", "width", "batch_size", "epochs", "precision"} <= set(PACK_FIELDS)
    assert not {"optimizer", "lr", "lam", "seed"} & set(PACK_FIELDS)  # packs may differ here
    train_flags = {a.dest for a in next(
        p for p in build_parser()._subparsers._group_actions[0].choices.values()
        if p.prog.endswith(" train"))._actions}
    for f in dataclasses.fields(TrainConfig):
        kind, _ = field_type(f.name)
        assert kind in (bool, int, float, str, list, dict), f.name
        assert f.name in train_flags, f.name
    with pytest.raises(ConfigError, match="regularize_bn: cannot read"):
        TrainConfig.from_dict({"regularize_bn": [1]})  # bool([1]) was True
    with pytest.raises(ConfigError, match="lr: cannot read"):
        TrainConfig.from_dict({"lr": True})
    assert TrainConfig.from_dict({"epochs": "10 5", "width": 0.25}).epochs == [10, 5]


def test_the_torch_pruning_surface_is_checked_in_one_line():
    import types

    import torch_pruning

    from implicit_sparsity.errors import ImplicitSparsityError
    from implicit_sparsity.prune import torch_pruning_api

    torch_pruning_api.check(torch_pruning)  # the installed one has all of it
    old = types.SimpleNamespace(__version__="0.9", DependencyGraph=object)
    with pytest.raises(ImplicitSparsityError, match="torch-pruning 0.9 lacks prune_conv_out"):
        torch_pruning_api.check(old)
