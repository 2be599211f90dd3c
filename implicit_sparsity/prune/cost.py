"""What a model costs: parameters, MACs (torch.utils.flop_counter), measured latency
(torch.utils.benchmark, threads fixed and stated; before and after interleaved over
several rounds, reported with the spread of the speed-up)."""

from __future__ import annotations

import statistics

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


#: Rounds of the interleaved latency measurement (before, after, before, after, ...).
LATENCY_ROUNDS = 5


def _timer(model: nn.Module, example: torch.Tensor, threads: int):
    from torch.utils import benchmark

    return benchmark.Timer(stmt="model(x)", globals={"model": model, "x": example},
                           num_threads=threads)


@torch.no_grad()
def latency(model: nn.Module, example: torch.Tensor, threads: int | None = None,
            min_run_time: float = 0.5) -> float:
    """Median seconds per forward pass of `example`, model in eval mode."""
    model.eval()
    timer = _timer(model, example, threads or torch.get_num_threads())
    return timer.blocked_autorange(min_run_time=min_run_time).median


@torch.no_grad()
def interleaved_latency(before: nn.Module, after: nn.Module, example: torch.Tensor,
                        threads: int | None = None, min_run_time: float = 0.5,
                        rounds: int = LATENCY_ROUNDS) -> tuple[list[float], list[float]]:
    """Seconds per forward pass of both models, measured in alternating rounds (so that a
    change of machine load hits both alike): ([before per round], [after per round])."""
    threads = threads or torch.get_num_threads()
    timers = [_timer(m.eval(), example, threads) for m in (before, after)]
    single = [t.timeit(1).mean for t in timers]  # warm-up, and the size of a round
    number = max(1, int(min_run_time / (2 * rounds * max(single))))
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(rounds):
        for timer, into in zip(timers, times):
            into.append(timer.timeit(number).mean)
    return times


def latency_table(before: nn.Module, after: nn.Module, example: torch.Tensor,
                  batch_sizes=(1, 64), threads: int | None = None,
                  min_run_time: float = 0.5, rounds: int = LATENCY_ROUNDS) -> list[dict]:
    """Latency of both models at each batch size, interleaved over `rounds` rounds: the
    medians, and the speed-up's median and range over the rounds."""
    rows = []
    for batch in batch_sizes:
        x = example[:1].expand(batch, *example.shape[1:]).contiguous()
        first, second = interleaved_latency(before, after, x, threads, min_run_time, rounds)
        ratios = sorted(b / a for b, a in zip(first, second))
        rows.append({"device": str(x.device), "batch": batch,
                     "threads": threads or torch.get_num_threads(),
                     "before_ms": 1e3 * statistics.median(first),
                     "after_ms": 1e3 * statistics.median(second),
                     "speedup": statistics.median(ratios), "speedup_min": ratios[0],
                     "speedup_max": ratios[-1], "rounds": rounds})
    return rows
