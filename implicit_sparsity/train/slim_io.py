"""Saving a slim model so that it loads back without pickled code (here, beside the run
it came from: `load_slim` rebuilds the network from the run's config).

    slim.pt               tensors and plain data (weights_only=True): the run's config and
                          the slim state dict; `load_slim` rebuilds the network from the config
                          and gives each layer the saved (smaller) shapes
    slim.pt2              a torch.export program (any batch size):
                          `torch.export.load("slim.pt2").module()` needs no code of ours
    slim.torchscript.pt   the same as TorchScript, for runtimes that still take it
                          (`torch.jit.load`; PyTorch has deprecated TorchScript)
    prune_report.json     the per-layer figures, the proof and the cost
"""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path

import torch
from torch import nn

from implicit_sparsity.errors import ProofError, RunStateError, first_line
from implicit_sparsity.io import (
    atomic_torch_save,
    atomic_write_bytes,
    atomic_write_text,
    load_tensors,
)
from implicit_sparsity.models import adopt_shapes
from implicit_sparsity.prune.api import DEFAULT_TOLERANCE, PruneResult
from implicit_sparsity.train.config import TrainConfig
from implicit_sparsity.train.restore import build_model_for

SLIM = "slim.pt"
EXPORTED = "slim.pt2"
TORCHSCRIPT = "slim.torchscript.pt"
REPORT = "prune_report.json"
FORMAT = "implicit-sparsity-slim/1"


class EquivalenceError(ProofError):
    """The slim model's predictions differ from the original's beyond the tolerance."""


def check_before_writing(result: PruneResult, tolerance: float, force: bool) -> None:
    if result.equivalence is None:
        raise EquivalenceError("no proof: compare outputs on data (check_data) before saving")
    if result.verified(tolerance) or force:
        return
    raise EquivalenceError(
        f"refusing to write: {result.equivalence.describe()} (tolerance {tolerance:g}); "
        "--force writes it anyway, at the risk of a model that no longer predicts what the "
        "original did")


def save_slim(result: PruneResult, out: str | Path, example_input: torch.Tensor,
              config: dict | None = None, tolerance: float = DEFAULT_TOLERANCE,
              force: bool = False, extra: dict | None = None) -> dict[str, Path]:
    """Write the slim model (both formats) and its report into folder `out`."""
    check_before_writing(result, tolerance, force)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model = result.model.eval()
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    atomic_torch_save({"format": FORMAT, "config": config, "state_dict": state}, out / SLIM)
    example = example_input[:2].expand(2, *example_input.shape[1:]).contiguous()
    batch = torch.export.Dim("batch", min=1)
    program = torch.export.export(model, (example,), dynamic_shapes=({0: batch},))
    buffer = io.BytesIO()  # written whole and atomically, like every file of ours
    torch.export.save(program, buffer)
    atomic_write_bytes(out / EXPORTED, buffer.getvalue())
    with warnings.catch_warnings():  # TorchScript is deprecated, still widely deployed
        warnings.simplefilter("ignore", DeprecationWarning)
        # shape checks inside attention trace as constants: fine for this model, whose
        # reloaded outputs the prune command compares with the model in memory
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        with torch.no_grad():
            buffer = io.BytesIO()
            torch.jit.save(torch.jit.trace(model, example, check_trace=False), buffer)
    atomic_write_bytes(out / TORCHSCRIPT, buffer.getvalue())
    report = {**result.to_dict(), "tolerance": tolerance, "forced": bool(
        force and not result.verified(tolerance)), **(extra or {})}
    atomic_write_text(out / REPORT, json.dumps(report, indent=1))
    return {"slim": out / SLIM, "exported": out / EXPORTED, "torchscript": out / TORCHSCRIPT,
            "report": out / REPORT}


def load_slim(path: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """Load `slim.pt` (or a folder holding it) as a module of ours, in eval mode."""
    path = Path(path)
    file = path / SLIM if path.is_dir() else path
    try:
        saved = load_tensors(file, map_location=device)
    except (OSError, RuntimeError) as error:
        raise RunStateError(f"cannot load slim model {file}: {first_line(error)}"
                            ) from None
    if not isinstance(saved, dict) or saved.get("format") != FORMAT:
        raise RunStateError(f"{file} is not a slim model of implicit-sparsity")
    if saved.get("config") is None:
        raise RunStateError(f"{file} has no config to rebuild the network from; load "
                            f"{EXPORTED} with torch.export.load instead")
    model = build_model_for(TrainConfig.from_dict(saved["config"]))
    adopt_shapes(model, saved["state_dict"])
    model.load_state_dict(saved["state_dict"])
    return model.to(device).eval()
