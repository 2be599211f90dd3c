"""One shared check: a run killed after its first epoch and resumed ends where the
straight run ends."""

import pytest
import torch

from implicit_sparsity.train import read_metrics, train


def train_straight_and_resumed(config, folder):
    """(straight, resumed) results of `config`: one trained in one go, one killed after
    epoch 1 (its folder then holds that epoch only) and run again."""
    straight = train(config, folder / "straight", verbose=False)

    def stop_after_first_epoch(epoch, model, metrics):
        if epoch == 1:
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        train(config, folder / "killed", callbacks=(stop_after_first_epoch,), verbose=False)
    assert [m["epoch"] for m in read_metrics(folder / "killed")] == [1]
    return straight, train(config, folder / "killed", verbose=False)


def assert_same_weights(a, b) -> None:
    for key, value in a.model.state_dict().items():
        assert torch.equal(value, b.model.state_dict()[key]), key
