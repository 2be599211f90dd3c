"""The Lightning and Hugging Face callbacks with the real packages and a real Trainer on a
tiny model and tiny data (`.ci/run` installs lightning and transformers): sparsity logged
each epoch to the trainer's logger, the gamma / beta history kept, dead filters harvested
while training (the model narrower, training going on), and the trained model pruned with
its proof into a slim folder at the end. And Hugging Face folders as model and weights."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from torch import nn

from conftest import TORCHVISION  # noqa: F401  (imported first: transformers imports it)
from implicit_sparsity.errors import ImplicitSparsityError
from implicit_sparsity.measure import SparsityMonitor
from implicit_sparsity.models import build_model
from implicit_sparsity.train.callbacks import EpochHooks, huggingface_callback, images_of, \
    lightning_callback
from implicit_sparsity.train.slim_io import REPORT, SLIM

PLANTED = {"features.2.bn": [0, 2, 3], "features.5.bn": [1, 5]}


@torch.no_grad()
def plant(modules: dict[str, nn.Module], planted: dict[str, list[int]]) -> int:
    """Channels with gamma 0 and beta -1: zero after the ReLU, so zero gradient: they stay
    dead whatever the training does (no weight decay on them)."""
    for path, channels in planted.items():
        modules[path].weight[channels] = 0.0
        modules[path].bias[channels] = -1.0
    return sum(len(c) for c in planted.values())


def images(n=32, channels=1, size=28, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, channels, size, size, generator=g), torch.randint(0, 3, (n,),
                                                                            generator=g)


def test_images_are_found_in_every_batch_form():
    x = torch.zeros(2, 1, 4, 4)
    for batch in (x, (x, torch.zeros(2)), [x], {"pixel_values": x, "labels": 0}):
        assert images_of(batch) is x
    with pytest.raises(ImplicitSparsityError, match="cannot find the images"):
        images_of({"text": "no"})


def test_bad_options_are_refused_before_training(tmp_path):
    with pytest.raises(ImplicitSparsityError, match="nothing to do"):
        EpochHooks()
    with pytest.raises(ImplicitSparsityError, match="harvest_every"):
        EpochHooks(harvest_every=-1)
    with pytest.raises(ImplicitSparsityError, match="unknown prune_criterion"):
        EpochHooks(prune_to=tmp_path / "slim", prune_criterion="magnitude")
    (tmp_path / "mine.txt").write_text("a user's file")
    with pytest.raises(ImplicitSparsityError, match="not a slim model"):
        EpochHooks(prune_to=tmp_path)  # a folder holding other files is never written into
    assert (tmp_path / "mine.txt").read_text() == "a user's file"


def test_lightning_trainer_logs_harvests_and_prunes(tmp_path):
    pl = pytest.importorskip("lightning.pytorch")
    from lightning.pytorch.loggers import CSVLogger

    class Module(pl.LightningModule):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.net = build_model("basicnet", in_channels=1, num_classes=3, width=0.125)

        def forward(self, x):
            return self.net(x)

        def training_step(self, batch, _):
            x, y = batch
            return nn.functional.cross_entropy(self.net(x), y)

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=1e-3)

    module = Module()
    planted = plant(dict(module.net.named_modules()), PLANTED)
    widths = {p: module.net.get_submodule(p).num_features for p in PLANTED}
    monitor = SparsityMonitor(tmp_path / "monitor", tensorboard=False)
    callback = lightning_callback(monitor, activation_batches=2, harvest_every=1,
                                  prune_to=tmp_path / "slim")
    trainer = pl.Trainer(max_epochs=2, callbacks=[callback], accelerator="cpu",
                         logger=CSVLogger(tmp_path, name="logs"), enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False,
                         log_every_n_steps=1)
    x, y = images()
    trainer.fit(module, torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y),
                                                    batch_size=8))
    # harvested at the end of epoch 1: the planted filters left the model being trained
    records = callback.hooks.harvester.records
    assert records[0]["total_removed"] == planted and records[1]["total_removed"] == 0
    for path, channels in PLANTED.items():
        assert module.net.get_submodule(path).num_features == widths[path] - len(channels)
    # the monitor: sparsity by |gamma| and by activation on the 2-batch sample, at the
    # original widths (the harvested filters count as dead), the history kept
    lines = [json.loads(line) for line in (tmp_path / "monitor/sparsity.jsonl").open()]
    assert [line["epoch"] for line in lines] == [1, 2]
    assert lines[0]["activation_batches"] == 2 and "sparsity_activation_total" in lines[0]
    assert (tmp_path / "monitor/bn_history").is_dir()
    # the trainer's logger got the totals
    rows = list(csv.DictReader(open(tmp_path / "logs/version_0/metrics.csv")))
    logged = [r for r in rows if r.get("sparsity/sparsity_gamma_total")]
    assert len(logged) == 2 and float(logged[0]["sparsity/filters_harvested"]) == planted
    # the slim model: nothing dead was left to remove, and the proof holds
    report = json.loads((tmp_path / "slim" / REPORT).read_text())
    assert (tmp_path / "slim" / SLIM).is_file()
    assert report["equivalence"]["changed_predictions"] == 0
    assert callback.hooks.pruned["proof"]["max_abs_diff"] <= 1e-6


@pytest.fixture(scope="module")
def transformers():
    return pytest.importorskip("transformers")


def tiny_hf_resnet(transformers, seed=0):
    torch.manual_seed(seed)
    config = transformers.ResNetConfig(num_channels=1, embedding_size=8, hidden_sizes=[8, 16],
                                       depths=[1, 1], num_labels=3, layer_type="basic",
                                       image_size=28)
    return transformers.ResNetForImageClassification(config)


HF_PLANTED = {"resnet.encoder.stages.0.layers.0.layer.0.normalization": [0, 3, 5],
              "resnet.encoder.stages.1.layers.0.layer.0.normalization": [2, 7]}


class DictImages(torch.utils.data.Dataset):
    """Images as transformers' image collators give them: pixel_values and labels."""

    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"pixel_values": self.x[i], "labels": self.y[i]}


def test_huggingface_trainer_logs_harvests_and_prunes(transformers, tmp_path):
    model = tiny_hf_resnet(transformers)
    planted = plant(dict(model.named_modules()), HF_PLANTED)
    monitor = SparsityMonitor(tmp_path / "monitor", tensorboard=False)
    callback = huggingface_callback(monitor, activation_batches=2, harvest_every=1,
                                    prune_to=tmp_path / "slim")
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "trainer"), num_train_epochs=2, per_device_train_batch_size=8,
        learning_rate=1e-3, weight_decay=0.0, report_to=[], save_strategy="no",
        logging_strategy="epoch", use_cpu=True, disable_tqdm=True, seed=0)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=DictImages(*images()),
                                   callbacks=[callback])
    trainer.train()
    records = callback.hooks.harvester.records
    assert records[0]["total_removed"] == planted and records[1]["total_removed"] == 0
    for path, channels in HF_PLANTED.items():
        assert model.get_submodule(path).num_features == 8 * (1 + ("stages.1" in path)) - len(
            channels)
    logged = [e for e in trainer.state.log_history if "sparsity/sparsity_gamma_total" in e]
    assert [round(e["epoch"]) for e in logged] == [1, 2]
    assert logged[0]["sparsity/filters_harvested"] == planted
    assert "sparsity/sparsity_activation_total" in logged[0]
    report = json.loads((tmp_path / "slim" / REPORT).read_text())
    assert report["equivalence"]["changed_predictions"] == 0
    reloaded = torch.export.load(str(tmp_path / "slim" / "slim.pt2")).module()
    x, _ = images(4)
    with torch.no_grad():
        assert torch.allclose(reloaded(x), model.eval()(pixel_values=x).logits, atol=1e-5)


@pytest.fixture(scope="module")
def hf_folder(transformers, tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    model = tiny_hf_resnet(transformers)
    plant(dict(model.named_modules()), HF_PLANTED)
    model.save_pretrained(root / "resnet")
    torch.save(images(6)[0], root / "x.pt")
    (root / "noweights").mkdir()
    (root / "noweights/config.json").write_text((root / "resnet/config.json").read_text())
    return root


def test_a_huggingface_folder_as_weights_alone_and_as_a_model(hf_folder, tmp_path, capsys):
    from implicit_sparsity.cli import main

    only = tmp_path / "weights_only.json"
    assert main(["analyze", str(hf_folder / "resnet"), "--json", str(only)]) == 0
    layers = {l["name"]: l for l in json.loads(only.read_text())["layers"]}
    for path, channels in HF_PLANTED.items():
        assert layers[path]["dead"] == len(channels)
        assert layers[path]["conv"] == path.replace("normalization", "convolution")
    full = tmp_path / "full.json"
    assert main(["analyze", "--model", f"hf:{hf_folder / 'resnet'}", "--data",
                 str(hf_folder / "x.pt"), "--criterion", "gamma", "--json", str(full)]) == 0
    dead = {l["name"]: l["inactive_gamma"] for l in json.loads(full.read_text())["layers"]}
    assert dead == {f"model.{k.replace('normalization', 'convolution')}": layers[k]["dead"]
                    for k in layers if layers[k]["channels"]}  # the two agree per layer
    assert main(["prune", "--model", f"hf:{hf_folder / 'resnet'}", "--data",
                 str(hf_folder / "x.pt"), "--criterion", "gamma", "--no-latency", "--out",
                 str(tmp_path / "slim")]) == 0
    assert "0 of 6 predictions changed" in capsys.readouterr().out


@pytest.mark.parametrize("model, message", [
    ("hf:{root}/missing", "not a Hugging Face folder"),
    ("hf:{root}/noweights", "a Hugging Face folder with no weights"),
], ids=["no-folder", "no-weights"])
def test_bad_huggingface_folders_are_one_line(hf_folder, capsys, model, message):
    from test_bad_input import run_cli

    code = run_cli(["analyze", "--model", model.replace("{root}", str(hf_folder)), "--data",
                    str(hf_folder / "x.pt"), "--criterion", "gamma"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and message in err, err
