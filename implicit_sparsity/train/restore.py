"""Bring a trained model (and its training corpus) back from a run folder or checkpoint."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from implicit_sparsity.data import get_dataset_entry, load_dataset
from implicit_sparsity.errors import RunStateError, first_line
from implicit_sparsity.io import run_dir as rd
from implicit_sparsity.models import adopt_shapes, build_model, get_model_entry
from implicit_sparsity.train.config import TrainConfig


@dataclass
class TrainedRun:
    config: TrainConfig
    model: nn.Module
    epoch: int
    data_stats: dict
    run_dir: Path | None
    #: a run that harvested while training (train.harvest): its layers' original widths and
    #: the original index of each channel left
    harvest: dict | None = None


def checkpoint_path(path: str | Path) -> Path:
    path = Path(path)
    candidate = path / rd.CHECKPOINT if path.is_dir() else path
    if not candidate.is_file():
        raise RunStateError(f"no checkpoint at {candidate} (expected a run folder or a "
                            f"{rd.CHECKPOINT} file)")
    return candidate


def input_size_for(config: TrainConfig) -> int:
    """The side of the images the config's model sees (after any padding)."""
    entry = get_dataset_entry(config.dataset)
    return max(entry.image_size, get_model_entry(config.model).min_input_size(entry.head))


def build_model_for(config: TrainConfig) -> nn.Module:
    """The (freshly initialized) network a config describes, without loading its data."""
    entry = get_dataset_entry(config.dataset)
    return build_model(config.model, in_channels=entry.in_channels,
                       num_classes=config.class_subset or entry.num_classes, head=entry.head,
                       input_size=input_size_for(config), width=config.width,
                       negative_slope=config.negative_slope, beta_init=config.beta_init)


def load_trained(path: str | Path, device: str | torch.device = "cpu") -> TrainedRun:
    """The model of a run folder or checkpoint, rebuilt from its saved config, in eval mode."""
    if str(path).endswith(".pt2"):
        raise RunStateError(f"{path} is a torch.export program: it holds no modules to trace; "
                            "give your model's factory instead (--model MODULE:FUNCTION "
                            "--weights STATE.pt)")
    file = checkpoint_path(path)
    try:
        state = rd.load_checkpoint(file, map_location=device)
    except Exception as error:
        raise RunStateError(f"cannot load checkpoint {file}: {first_line(error)}"
                            ) from None
    if isinstance(state, dict) and str(state.get("format", "")).startswith(
            "implicit-sparsity-slim"):
        raise RunStateError(f"{file} is a slim model, not a run's checkpoint: it has nothing "
                            "left to measure as trained; analyze or prune the run it came "
                            "from, or load it with load_slim()")
    if not isinstance(state, dict) or not {"config", "model", "epoch"} <= set(state):
        raise RunStateError(f"{file} is not a checkpoint of implicit-sparsity (expected a "
                            "run folder's checkpoint.pt)")
    config = TrainConfig.from_dict(state["config"])
    model = build_model_for(config)
    try:
        if state.get("harvest"):  # harvested while training: its architecture now
            from implicit_sparsity.train.harvest import adopt_harvested

            adopt_harvested(model, state["model"], state["harvest"])
        adopt_shapes(model, state["model"])  # a fine-tuned slim model has smaller layers
        model.load_state_dict(state["model"])
    except (RuntimeError, KeyError, ValueError, AttributeError) as error:
        raise RunStateError(f"{file}: its weights do not fit the network its config describes "
                            f"({first_line(error, 120)})") from None
    model.to(device).eval()
    return TrainedRun(config, model, state["epoch"], state.get("data_stats", {}),
                      file.parent if file.name == rd.CHECKPOINT else None,
                      state.get("harvest"))


def load_training_data(run: TrainedRun, device, data_dir: str | None = None):
    """The run's data (same subsets), normalized with the statistics it was trained with."""
    config = run.config
    entry = get_dataset_entry(config.dataset)
    min_size = get_model_entry(config.model).min_input_size(entry.head)
    return load_dataset(config.dataset, data_dir or config.data_dir, device=device,
                        classes=config.class_subset,
                        train_subset=config.train_subset, test_subset=config.test_subset,
                        subset_seed=config.subset_seed, min_size=min_size,
                        num_workers=config.num_workers, mean=run.data_stats.get("mean"),
                        std=run.data_stats.get("std"))
