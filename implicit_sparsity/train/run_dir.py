"""The run folder: what a training run writes, and how it is read back.

    config.yaml          the full resolved config
    metrics.jsonl        one JSON line per epoch
    bn_history/epoch_NNNN.pt  every BatchNorm layer's gamma and beta (epoch 0 = at init)
    checkpoint.pt        model + optimizer state after the last finished epoch (atomic)
    summary.json         written last: its presence means the run is finished

Every .pt file holds tensors and plain data only and loads with weights_only=True.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import nn

from implicit_sparsity.models.blocks import feature_layers

CONFIG = "config.yaml"
METRICS = "metrics.jsonl"
CHECKPOINT = "checkpoint.pt"
SUMMARY = "summary.json"
BN_HISTORY = "bn_history"


def atomic_torch_save(obj, path: Path) -> None:
    """Write to a temporary file in the same folder, then rename over the target."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def load_checkpoint(path: Path, map_location="cpu") -> dict:
    """Load a checkpoint without ever running code from it."""
    return torch.load(path, map_location=map_location, weights_only=True)


def is_finished(run_dir: Path) -> bool:
    return (Path(run_dir) / SUMMARY).is_file()


def read_metrics(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / METRICS
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def truncate_metrics(run_dir: Path, last_epoch: int) -> None:
    """Drop lines of epochs after `last_epoch` (written before a kill, not checkpointed)."""
    kept = [m for m in read_metrics(run_dir) if m["epoch"] <= last_epoch]
    atomic_write_text(Path(run_dir) / METRICS, "".join(json.dumps(m) + "\n" for m in kept))


def append_metrics(run_dir: Path, metrics: dict) -> None:
    with open(Path(run_dir) / METRICS, "a") as f:
        f.write(json.dumps(metrics) + "\n")
        f.flush()
        os.fsync(f.fileno())


def bn_layer_names(model: nn.Module) -> dict[str, nn.Module]:
    """Every BatchNorm layer: conv features as C1..Cn, the others by module path."""
    names = {id(block.bn): name for name, block in feature_layers(model)}
    return {names.get(id(m), path): m for path, m in model.named_modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine}


def save_bn_snapshot(model: nn.Module, run_dir: Path, epoch: int) -> None:
    layers = {name: {"gamma": m.weight.detach().float().cpu().clone(),
                     "beta": m.bias.detach().float().cpu().clone()}
              for name, m in bn_layer_names(model).items()}
    folder = Path(run_dir) / BN_HISTORY
    folder.mkdir(exist_ok=True)
    atomic_torch_save({"epoch": epoch, "layers": layers}, folder / f"epoch_{epoch:04d}.pt")


def load_bn_history(run_dir: Path) -> dict[str, dict[str, torch.Tensor]]:
    """{layer: {"epochs": [E], "gamma": [E, C], "beta": [E, C]}} over the saved epochs."""
    files = sorted((Path(run_dir) / BN_HISTORY).glob("epoch_*.pt"))
    snapshots = [torch.load(f, map_location="cpu", weights_only=True) for f in files]
    history: dict[str, dict[str, torch.Tensor]] = {}
    if not snapshots:
        return history
    for name in snapshots[0]["layers"]:
        history[name] = {
            "epochs": torch.tensor([s["epoch"] for s in snapshots]),
            "gamma": torch.stack([s["layers"][name]["gamma"] for s in snapshots]),
            "beta": torch.stack([s["layers"][name]["beta"] for s in snapshots]),
        }
    return history
