"""Hugging Face image classifiers from a local folder written by `save_pretrained`
(`config.json` and the weights: `model.safetensors`, `pytorch_model.bin`, or their shards):
`--model hf:FOLDER`. The network is built by `transformers` from the config alone (never
code from the folder: no `trust_remote_code`), the weights are read as tensors only, and
nothing is downloaded."""

from __future__ import annotations

import json
from pathlib import Path

from torch import nn

from implicit_sparsity.errors import ConfigError, RunStateError, first_line

#: `--model hf:FOLDER` names a Hugging Face folder.
PREFIX = "hf"
CONFIG = "config.json"
#: A folder's weights: one file, or shards listed by an index (tried in this order).
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
#: The input size when the config names none (the ImageNet size these models default to).
DEFAULT_IMAGE_SIZE = 224


def is_huggingface_folder(path) -> bool:
    path = Path(path)
    return path.is_dir() and (path / CONFIG).is_file()


def weight_files(folder: Path, flag: str) -> list[Path]:
    for name in WEIGHT_FILES:
        if (folder / name).is_file():
            return [folder / name]
    for name in INDEXES:
        if (folder / name).is_file():
            try:
                shards = sorted(set(json.loads((folder / name).read_text())["weight_map"]
                                    .values()))
            except (OSError, ValueError, KeyError, AttributeError) as error:
                raise RunStateError(f"{flag} {folder / name}: not a weights index "
                                    f"({first_line(error)})") from None
            return [folder / shard for shard in shards]
    raise RunStateError(f"{flag} {folder}: a Hugging Face folder with no weights (none of "
                        f"{', '.join(WEIGHT_FILES + INDEXES)})")


def folder_tensors(folder, read_file, flag: str = "--weights") -> dict:
    """Every tensor of the folder's weight files (`read_file(path, flag)` reads one)."""
    state: dict = {}
    for path in weight_files(Path(folder), flag):
        state.update(read_file(path, flag))
    return state


class HuggingFaceClassifier(nn.Module):
    """A transformers image classifier called on pixel values, giving its logits (a tensor,
    which the analysis, the proof and the exports compare). It declares one input's shape,
    so that its shape checks trace (measure.features.EXAMPLE_INPUT_SHAPE)."""

    def __init__(self, model: nn.Module, input_shape: tuple[int, ...]):
        super().__init__()
        self.model = model
        self.example_input_shape = input_shape

    def forward(self, pixel_values):
        output = self.model(pixel_values=pixel_values)
        return output["logits"] if isinstance(output, dict) else output  # ModelOutput: a dict


def load_huggingface_folder(folder: str, arguments: dict, read_file) -> HuggingFaceClassifier:
    """The classifier of `folder`, its weights loaded (`arguments` override config fields,
    e.g. `num_labels`, for weights given separately)."""
    flag = f"--model {PREFIX}:{folder}"
    if not is_huggingface_folder(folder):
        raise ConfigError(f"{flag}: not a Hugging Face folder (no {CONFIG} in it)")
    try:
        import transformers
    except ImportError:
        raise ConfigError(f"{flag}: reading a Hugging Face folder needs transformers "
                          "(pip install transformers)") from None
    try:
        config = transformers.AutoConfig.from_pretrained(folder, local_files_only=True,
                                                         trust_remote_code=False)
        for key, value in arguments.items():
            setattr(config, key, value)
        model = transformers.AutoModelForImageClassification.from_config(
            config, trust_remote_code=False)
    except Exception as error:  # transformers raises many kinds for an unknown config
        raise ConfigError(f"{flag}: transformers cannot build an image classifier from its "
                          f"{CONFIG} ({type(error).__name__}: {first_line(error)})") from None
    size = getattr(config, "image_size", None) or DEFAULT_IMAGE_SIZE
    size = tuple(size) if isinstance(size, (list, tuple)) else (size, size)
    return HuggingFaceClassifier(model, (1, getattr(config, "num_channels", 3), *size))
