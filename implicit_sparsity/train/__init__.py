"""Training runs: config, loop, run folder."""

from implicit_sparsity.io.run_dir import is_finished, load_bn_history, load_checkpoint, read_metrics
from implicit_sparsity.train.config import TrainConfig, load_config_file
from implicit_sparsity.train.loop import RunResult, ensure_trained, evaluate, train

__all__ = ["TrainConfig", "load_config_file", "RunResult", "ensure_trained", "evaluate",
           "train", "is_finished", "load_bn_history", "load_checkpoint", "read_metrics"]
