"""What a model costs: parameters, MACs (torch.utils.flop_counter), measured latency
(torch.utils.benchmark, threads fixed and stated)."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def parameter_counts(model: nn.Module) -> dict[str, int]:
    conv = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Conv2d))
    return {"all": sum(p.numel() for p in model.parameters()), "conv": conv}


@torch.no_grad()
def macs(model: nn.Module, example: torch.Tensor) -> dict:
    """Multiply-accumulates of one forward pass of `example` (flops / 2), in total and per
    module path (convs and linears)."""
    model.eval()
    counter = FlopCounterMode(display=False)
    with counter:
        model(example)
    per_module = {}
    for name, ops in counter.get_flop_counts().items():
        module_path = name.split(".", 1)[1] if "." in name else None
        if module_path is None:
            continue
        try:
            module = model.get_submodule(module_path)
        except AttributeError:
            continue
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            per_module[module_path] = int(sum(ops.values())) // 2
    return {"total": int(counter.get_total_flops()) // 2, "per_module": per_module}


@torch.no_grad()
def latency(model: nn.Module, example: torch.Tensor, threads: int | None = None,
            min_run_time: float = 0.5) -> float:
    """Median seconds per forward pass of `example`, model in eval mode."""
    from torch.utils import benchmark

    model.eval()
    threads = threads or torch.get_num_threads()
    timer = benchmark.Timer(stmt="model(x)", globals={"model": model, "x": example},
                            num_threads=threads)
    return timer.blocked_autorange(min_run_time=min_run_time).median


def latency_table(before: nn.Module, after: nn.Module, example: torch.Tensor,
                  batch_sizes=(1, 64), threads: int | None = None,
                  min_run_time: float = 0.5) -> list[dict]:
    """Latency of both models at each batch size, measured alternately in one run."""
    rows = []
    for batch in batch_sizes:
        x = example[:1].expand(batch, *example.shape[1:]).contiguous()
        first = latency(before, x, threads, min_run_time)
        second = latency(after, x, threads, min_run_time)
        rows.append({"device": str(x.device), "batch": batch,
                     "threads": threads or torch.get_num_threads(),
                     "before_ms": 1e3 * first, "after_ms": 1e3 * second,
                     "speedup": first / second})
    return rows
