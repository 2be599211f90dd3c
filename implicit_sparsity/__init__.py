"""implicit-sparsity: train, measure and exploit the implicit filter-level sparsity of CNNs.

Implements Mehta, Kim, Theobalt, "On Implicit Filter Level Sparsity in Convolutional
Neural Networks", CVPR 2019.

The public API is the names below, importable from here (each is loaded on first use, so
that `import implicit_sparsity` stays cheap); everything else stays importable from its
module but may change between versions.

    TrainConfig, load_run              a run's settings; a run folder read back (training
                                       itself: `from implicit_sparsity.train import train`,
                                       since `implicit_sparsity.train` is its subpackage)
    analyze, SparsityMonitor           measure sparsity (after training, or every epoch)
    Harvester                          remove dead filters from a model while it trains
    lightning_callback,                the monitor, harvesting and pruning for PyTorch
    huggingface_callback               Lightning's and transformers' Trainer
    prune_model, save_slim, load_slim  remove dead filters with a proof, save / load them
    tune_slim                          the latency-tuned slim model
    load_spec, run_sweep, run_findings experiment specs, sweeps, the paper's findings
    simulate                           the low-gradient simulation (Fig. 4)
    ImplicitSparsityError              the base of every error raised on bad input
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

#: public name -> the module that defines it
_PUBLIC = {
    "TrainConfig": "implicit_sparsity.train.config",
    "load_run": "implicit_sparsity.train.restore",
    "analyze": "implicit_sparsity.measure.report",
    "SparsityMonitor": "implicit_sparsity.measure.monitor",
    "Harvester": "implicit_sparsity.train.harvest",
    "lightning_callback": "implicit_sparsity.train.callbacks",
    "huggingface_callback": "implicit_sparsity.train.callbacks",
    "prune_model": "implicit_sparsity.prune.api",
    "save_slim": "implicit_sparsity.train.slim_io",
    "load_slim": "implicit_sparsity.train.slim_io",
    "tune_slim": "implicit_sparsity.prune.tune",
    "load_spec": "implicit_sparsity.study.spec",
    "run_sweep": "implicit_sparsity.study.sweep",
    "run_findings": "implicit_sparsity.findings.run",
    "simulate": "implicit_sparsity.study.simulate",
    "ImplicitSparsityError": "implicit_sparsity.errors",
}
_DEFINED_AS = {"load_run": "load_trained"}

__all__ = sorted(_PUBLIC) + ["__version__"]


def __getattr__(name: str):
    if name not in _PUBLIC:
        raise AttributeError(f"module 'implicit_sparsity' has no attribute {name!r}")
    value = getattr(importlib.import_module(_PUBLIC[name]), _DEFINED_AS.get(name, name))
    globals()[name] = value
    return value


def __dir__():
    return __all__
