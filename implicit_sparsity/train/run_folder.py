"""The policy of a run folder (its files: `io.run_dir`): a new folder, or one that holds
a resumable run of the same config; a finished run, a diverged one, another config's run or
a folder of other files is refused, and nothing is lost. Used by single and packed training.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from implicit_sparsity.errors import ConfigError, DivergedError, RunStateError, first_line
from implicit_sparsity.io import run_dir as rd
from implicit_sparsity.models import bn_layer_names
from implicit_sparsity.train.config import TrainConfig, load_config_file, result_fields


def same_config(out: Path, saved: TrainConfig, config: TrainConfig) -> None:
    """`saved` (a run folder's config) must compute what `config` computes."""
    saved, wanted = result_fields(saved), result_fields(config)
    differ = sorted(k for k in wanted if saved.get(k) != wanted[k])
    if differ:
        raise RunStateError(f"{out} holds a run with another config (differs in: "
                            f"{', '.join(differ)}); choose another --out")


def check_run_dir_config(out: Path, config: TrainConfig) -> None:
    """The run folder's saved config must compute what `config` computes."""

    same_config(out, TrainConfig.from_dict(load_config_file(out / rd.CONFIG)), config)


def load_resume_state(out: Path, device="cpu") -> dict:
    """A run folder's checkpoint, or one line saying why it cannot be resumed."""
    try:
        state = rd.load_checkpoint(out / rd.CHECKPOINT, map_location=device)
        TrainConfig.from_dict(state["config"])
        int(state["epoch"])
    except Exception as error:  # truncated, not a checkpoint of ours, or unreadable
        first = first_line(error)
        raise RunStateError(f"cannot resume {out}: its {rd.CHECKPOINT} is damaged ({first}); "
                            "move the folder away and train again") from None
    return state


def check_run_dir(out: Path, config: TrainConfig, device="cpu") -> dict | None:
    """Check that `out` is new or holds a resumable run of this config (creates nothing).

    Returns the checkpoint to resume from, or None for a new run. A finished run, a run that
    diverged, a folder of a different config, or a non-empty folder that is not a run is
    refused (nothing lost). The checkpoint, not config.yaml, says what the run computes.
    """
    if out.exists() and not out.is_dir():
        raise RunStateError(f"{out} is a file, not a run folder")
    if rd.is_finished(out):
        raise RunStateError(f"run {out} is already finished; it is never overwritten "
                            f"(choose another --out)")
    record = rd.diverged(out)
    if record is not None:
        raise DivergedError(f"run {out} diverged (non-finite loss at epoch "
                            f"{record.get('epoch', '?')}, step {record.get('step', '?')}); it "
                            "is not resumed: change its settings and choose another --out")
    if (out / rd.CHECKPOINT).is_file():
        state = load_resume_state(out, device)
        same_config(out, TrainConfig.from_dict(state["config"]), config)
        return state
    if (out / rd.CONFIG).is_file():  # killed before its first checkpoint: nothing to keep
        try:
            check_run_dir_config(out, config)
        except ConfigError:
            pass  # a damaged config.yaml of a run without a checkpoint: start it again
        return None
    if out.exists() and any(out.iterdir()):
        raise RunStateError(f"{out} exists and is not a run folder; refusing to write into it")
    return None


def prepare_run_dir(out: Path, config: TrainConfig, model: nn.Module,
                    state: dict | None) -> list[dict]:
    """Write a new run's first files, or repair a resumed run's config and metrics from its
    checkpoint. Returns the metrics of the epochs done."""
    config.save_yaml(out / rd.CONFIG)  # atomic; rewritten on resume in case it was damaged
    if state is None:
        rd.save_bn_snapshot(bn_layer_names(model), out, 0)
        rd.write_metrics(out, [])
        return []
    history = state.get("metrics")
    if history is None:  # checkpoints of earlier versions hold no metrics
        history = [m for m in rd.read_metrics(out) if m.get("epoch", 0) <= state["epoch"]]
    rd.write_metrics(out, history)
    return list(history)
