"""Training runs: config, loop, run folder."""

from implicit_sparsity.train.config import TrainConfig, load_config_file
from implicit_sparsity.train.loop import RunResult, evaluate, train
from implicit_sparsity.train.run_dir import (is_finished, load_bn_history, load_checkpoint,
                                             read_metrics)

__all__ = ["TrainConfig", "load_config_file", "RunResult", "evaluate", "train", "is_finished",
           "load_bn_history", "load_checkpoint", "read_metrics"]
