"""The run folder: what a training run writes, and how it is read back.

    config.yaml          the full resolved config (atomic)
    metrics.jsonl        one JSON line per epoch, rewritten from the checkpoint on resume
    bn_history/epoch_NNNN.pt  every BatchNorm layer's gamma and beta (epoch 0 = at init)
    checkpoint.pt        model + optimizer state + every epoch's metrics after the last
                         finished epoch (atomic): the single source of truth of a run
    diverged.json        written when the loss became non-finite: the run stops there
    summary.json         written last: its presence means the run is finished

The process writing a run folder holds a lock on it (`FolderLock`): a second writer is
refused.

Every .pt file holds tensors and plain data only and loads with weights_only=True. Every
write is atomic and flushed to the disk, so a kill at any point leaves a resumable folder.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from implicit_sparsity.io.files import (
    append_line,
    atomic_torch_save,
    atomic_write_text,
    load_tensors,
)

CONFIG = "config.yaml"
METRICS = "metrics.jsonl"
CHECKPOINT = "checkpoint.pt"
SUMMARY = "summary.json"
DIVERGED = "diverged.json"
BN_HISTORY = "bn_history"

load_checkpoint = load_tensors


def is_finished(run_dir: Path) -> bool:
    return (Path(run_dir) / SUMMARY).is_file()


def diverged(run_dir: Path) -> dict | None:
    """The record of a run that diverged, or None."""
    path = Path(run_dir) / DIVERGED
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def mark_diverged(run_dir: Path, record: dict) -> None:
    atomic_write_text(Path(run_dir) / DIVERGED, json.dumps(record, indent=1))


def read_metrics(run_dir: Path) -> list[dict]:
    """Every complete line of metrics.jsonl (a torn last line, from a kill mid-append, is
    skipped: the checkpoint holds the same metrics and rewrites the file on resume)."""
    path = Path(run_dir) / METRICS
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    return records


def write_metrics(run_dir: Path, records: list[dict]) -> None:
    """Replace metrics.jsonl by `records` (atomic)."""
    atomic_write_text(Path(run_dir) / METRICS, "".join(json.dumps(m) + "\n" for m in records))


def truncate_metrics(run_dir: Path, last_epoch: int) -> None:
    """Drop lines of epochs after `last_epoch` (written before a kill, not checkpointed)."""
    write_metrics(run_dir, [m for m in read_metrics(run_dir) if m.get("epoch", 0) <= last_epoch])


def append_metrics(run_dir: Path, metrics: dict) -> None:
    append_line(Path(run_dir) / METRICS, json.dumps(metrics))


def save_bn_snapshot(layers: dict[str, nn.Module], run_dir: Path, epoch: int,
                     channels: dict[str, tuple[int, list[int]]] | None = None) -> None:
    """Save gamma and beta of each named BatchNorm layer (see `models.bn_layer_names`);
    nothing, and no folder, for a model without BatchNorm. `channels[name]`: (original
    width, original index of each channel the layer has now) of a layer that lost channels
    while training (train.harvest): saved at the original width, the lost channels NaN."""
    if not layers:
        return

    def full(name: str, values: torch.Tensor) -> torch.Tensor:
        values = values.detach().float().cpu().clone()
        if not channels or name not in channels:
            return values
        width, kept = channels[name]
        padded = torch.full((width,), float("nan"))
        padded[torch.as_tensor(kept, dtype=torch.long)] = values
        return padded

    snapshot = {name: {"gamma": full(name, m.weight), "beta": full(name, m.bias)}
                for name, m in layers.items()}
    folder = Path(run_dir) / BN_HISTORY
    folder.mkdir(exist_ok=True)
    atomic_torch_save({"epoch": epoch, "layers": snapshot}, folder / f"epoch_{epoch:04d}.pt")


def load_bn_history(run_dir: Path) -> dict[str, dict[str, torch.Tensor]]:
    """{layer: {"epochs": [E], "gamma": [E, C], "beta": [E, C]}} over the saved epochs."""
    files = sorted((Path(run_dir) / BN_HISTORY).glob("epoch_*.pt"))
    snapshots = [load_tensors(f) for f in files]
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
