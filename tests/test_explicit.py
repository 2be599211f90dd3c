"""The explicit baselines' building blocks: Network Slimming's L1 penalty and selection,
L1-norm filter selection, removal of live filters, fine-tuning from the slim weights."""

import pytest
import torch

from implicit_sparsity.errors import ConfigError
from implicit_sparsity.explicit import VGG16_A_FRACTIONS, l1_norm_selection, slimming_selection
from implicit_sparsity.models import build_model, feature_layers
from implicit_sparsity.optim import add_l1_gamma_gradient
from implicit_sparsity.prune import prune_model
from implicit_sparsity.train.slim_io import save_slim
from implicit_sparsity.train import TrainConfig, train


def test_l1_penalty_reaches_gamma_gradient_only():
    torch.manual_seed(0)
    model = build_model("basicnet", in_channels=1, num_classes=10, width=0.125)
    with torch.no_grad():
        feature_layers(model)[0][1].bn.weight[:3] = torch.tensor([-0.5, 0.0, 2.0])
    model(torch.randn(4, 1, 28, 28)).sum().backward()
    model.zero_grad(set_to_none=False)  # gradients of exactly zero: the penalty stands alone
    before = {n: p.grad.clone() for n, p in model.named_parameters()}
    add_l1_gamma_gradient(model, 1e-2)
    for name, p in model.named_parameters():
        delta = p.grad - before[name]
        if name.endswith("bn.weight"):
            assert torch.allclose(delta, 1e-2 * torch.sign(p.detach()), )
        else:
            assert torch.count_nonzero(delta) == 0, name
    c1 = dict(model.named_parameters())["features.0.bn.weight"]
    assert (c1.grad - before["features.0.bn.weight"])[:3].tolist() == pytest.approx(
        [-1e-2, 0.0, 1e-2])


def test_l1_penalty_in_training_shrinks_gamma(fashion_dir, tmp_path):
    common = dict(data_dir=str(fashion_dir), width="0.0625", epochs=[3], regularizer="none",
                  optimizer="sgd", lr=0.05)
    plain = train(TrainConfig(**common), tmp_path / "plain", verbose=False).model
    slim = train(TrainConfig(**common, l1_gamma=0.05), tmp_path / "l1", verbose=False).model
    def mean_gamma(m):
        return torch.cat([b.bn.weight.abs() for _, b in feature_layers(m)]).mean()
    assert mean_gamma(slim) < mean_gamma(plain) - 0.01


def test_slimming_selection_uses_one_global_threshold_and_never_empties_a_layer():
    model = build_model("basicnet", in_channels=1, num_classes=10, width=0.0625)
    layers = dict(feature_layers(model))  # 4, 8, 8, 16, 16, 32, 32 filters: 116
    with torch.no_grad():
        for i, (_, block) in enumerate(layers.items()):
            block.bn.weight.copy_(torch.linspace(1, 2, block.bn.num_features) + i)
        layers["C2"].bn.weight.copy_(torch.linspace(1e-4, 8e-4, 8))  # all tiny
        layers["C5"].bn.weight[[3, 7]] = torch.tensor([-1e-3, 2e-3])   # |gamma| counts
    masks = slimming_selection(model, ratio=10 / 116)
    assert masks["C2"].tolist() == [True] * 7 + [False]   # the strongest of C2 stays
    assert masks["C5"].nonzero().flatten().tolist() == [3, 7]
    assert not masks["C1"].any()
    # the 10 smallest |gamma| are C2's 8 and C5's 2; C2 keeps one, so 9 go
    assert sum(int(m.sum()) for m in masks.values()) == 9
    assert sum(int(m.sum()) for m in slimming_selection(model, ratio=12 / 116).values()) == 11
    with pytest.raises(ConfigError, match=r"\[0, 1\)"):
        slimming_selection(model, 1.0)


def test_l1_norm_selection_on_hand_made_weights():
    model = build_model("vgg16", in_channels=3, num_classes=10, width=0.0625)
    layers = dict(feature_layers(model))
    with torch.no_grad():
        for _, block in layers.items():
            n = block.conv.out_channels
            block.conv.weight.copy_(torch.arange(n, 0, -1.0).reshape(n, 1, 1, 1)
                                    .expand_as(block.conv.weight))  # filter 0 largest
    masks = l1_norm_selection(model, VGG16_A_FRACTIONS)
    assert masks["C1"].tolist() == [False, False, True, True]  # 50% of 4: the two smallest
    assert int(masks["C8"].sum()) == 16 and bool(masks["C8"][-16:].all())
    assert not any(masks[f"C{i}"].any() for i in range(2, 8))
    with pytest.raises(ConfigError, match="no conv layer"):
        l1_norm_selection(model, {"C99": 0.5})


def test_prune_live_filters_then_fine_tune_from_the_slim_weights(fashion_dir, tmp_path):
    config = TrainConfig(data_dir=str(fashion_dir), width="0.0625", epochs=[2], lam=1e-4,
                         l1_gamma=1e-3)
    trained = train(config, tmp_path / "sparse", verbose=False)
    masks = slimming_selection(trained.model, ratio=0.5)
    x = torch.randn(8, 1, 28, 28)
    result = prune_model(trained.model, x, selection=masks, check_data=[x],
                         latency_batches=())
    assert sum(l.filters_after for l in result.layers) == 116 - 58
    assert result.criterion == "selection"
    files = save_slim(result, tmp_path / "slim", x, config=trained.config.to_dict(), force=True)
    tuned = train(TrainConfig(data_dir=str(fashion_dir), width="0.0625", epochs=[1],
                              lam=1e-4, init_from=str(files["slim"])),
                  tmp_path / "fine-tuned", verbose=False)
    convs = [b.conv.out_channels for _, b in feature_layers(tuned.model)]
    assert convs == [l.filters_after for l in result.layers]
    assert tuned.metrics[0]["features"] == dict(zip([l.name for l in result.layers], convs))
    with pytest.raises(ConfigError, match="init_from: no file"):
        TrainConfig(init_from=str(tmp_path / "missing.pt")).validate()
