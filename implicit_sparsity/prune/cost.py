"""What a model costs: parameters, MACs (torch.utils.flop_counter), measured latency.

Latency has one definition wherever a speed-up is reported (`prune`, the demo, `compare`,
the benchmarks): torch.utils.benchmark timers with the thread count fixed and stated, a
warm-up, then the models timed in alternating rounds (so that a change of machine load
hits all alike); each model's median and interquartile range over the rounds, and the
speed-up's median and IQR over the rounds (each round's ratio pairs two timings taken
together). A speed-up whose IQR includes 1.0 is "within noise": the rounds do not agree
on which model is faster. (The two models' own IQRs can overlap while every round agrees,
when the machine's load drifts between rounds; pairing is what interleaving is for.)"""

from __future__ import annotations

import statistics

import torch
from torch import nn
from torch.utils import benchmark
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
    first, second = interleaved_times([before, after], example, threads, min_run_time, rounds)
    return first, second


@torch.no_grad()
def interleaved_times(models: list[nn.Module], example: torch.Tensor,
                      threads: int | None = None, min_run_time: float = 0.5,
                      rounds: int = LATENCY_ROUNDS) -> list[list[float]]:
    """Seconds per forward pass of each model, one timing of each per round, the rounds in
    turn; each model runs about `min_run_time` seconds in all, after a warm-up."""
    threads = threads or torch.get_num_threads()
    timers = [_timer(m.eval() if isinstance(m, nn.Module) else m, example, threads)
              for m in models]  # a module, or a runtime's callable (prune.runtimes)
    for timer in timers:
        timer.timeit(1)  # warm-up: first-call allocations, oneDNN primitive creation
    single = [t.timeit(1).mean for t in timers]
    numbers = [max(1, int(min_run_time / (rounds * s))) for s in single]
    times: list[list[float]] = [[] for _ in models]
    for _ in range(rounds):
        for timer, number, into in zip(timers, numbers, times):
            into.append(timer.timeit(number).mean)
    return times


def conv_seconds(model: nn.Module, example: torch.Tensor, threads: int | None = None,
                 min_run_time: float = 0.2, cache: dict | None = None) -> float:
    """Seconds per forward pass spent in the model's convolutions (`conv_times`, summed).
    Cheaper and steadier than timing whole models when two of them differ in a few
    convolutions."""
    return sum(conv_times(model, example, threads, min_run_time, cache).values())


@torch.no_grad()
def conv_times(model: nn.Module, example: torch.Tensor, threads: int | None = None,
               min_run_time: float = 0.2, cache: dict | None = None) -> dict[str, float]:
    """Seconds of each convolution (by module path) in a forward pass of `example`, each
    timed alone on the input it sees there (median of torch.utils.benchmark's blocks).
    `cache` (shapes and layout -> seconds) shares timings of identical convolutions."""
    model.eval()
    threads = threads or torch.get_num_threads()
    inputs: dict[str, torch.Tensor] = {}

    def keep_input(name: str):
        def hook(_module, args, _output) -> None:  # returns None: the output stays
            inputs.setdefault(name, args[0])
        return hook

    hooks = [m.register_forward_hook(keep_input(name))
             for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    try:
        model(example)
    finally:
        for hook in hooks:
            hook.remove()
    cache = {} if cache is None else cache
    seconds = {}
    for name, x in inputs.items():
        conv = model.get_submodule(name)
        key = (conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
               conv.padding, conv.dilation, conv.groups, conv.bias is not None,
               tuple(x.shape), x.is_contiguous(memory_format=torch.channels_last),
               conv.weight.is_contiguous(memory_format=torch.channels_last), x.dtype,
               str(x.device), threads)
        if key not in cache:
            timer = _timer(conv, x, threads)
            timer.timeit(1)  # warm-up
            cache[key] = timer.blocked_autorange(min_run_time=min_run_time).median
        seconds[name] = cache[key]
    return seconds


def quartiles(values: list[float]) -> tuple[float, float]:
    """(first, third) quartile; both the value itself for a single one."""
    if len(values) < 2:
        return values[0], values[0]
    q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, q3


def within_noise(first: list[float], second: list[float]) -> bool:
    """Whether the paired ratios first / second of rounds taken together have an
    interquartile range that includes 1 (no agreement on which is faster)."""
    q1, q3 = quartiles([a / b for a, b in zip(first, second)])
    return q1 <= 1.0 <= q3


def latency_row(first: list[float], second: list[float], batch: int, device: str,
                threads: int) -> dict:
    """One row of a latency table from both models' seconds per round."""
    ratios = [b / a for b, a in zip(first, second)]
    (b1, b3), (a1, a3), (r1, r3) = quartiles(first), quartiles(second), quartiles(ratios)
    return {"device": device, "batch": batch, "threads": threads,
            "before_ms": 1e3 * statistics.median(first), "before_iqr_ms": 1e3 * (b3 - b1),
            "after_ms": 1e3 * statistics.median(second), "after_iqr_ms": 1e3 * (a3 - a1),
            "speedup": statistics.median(ratios), "speedup_q1": r1, "speedup_q3": r3,
            "speedup_min": min(ratios), "speedup_max": max(ratios), "rounds": len(ratios),
            "within_noise": within_noise(first, second)}


def describe_latency(row: dict) -> str:
    """A latency row as one line: medians, IQRs, the speed-up and whether it is noise."""
    text = (f"latency {row['device']} batch {row['batch']:>3d} ({row['threads']} threads): "
            f"{row['before_ms']:.2f} ms -> {row['after_ms']:.2f} ms, speed-up "
            f"{row['speedup']:.2f}x")
    if "speedup_q1" in row:
        text += (f" (IQR {row['speedup_q1']:.2f}-{row['speedup_q3']:.2f} over "
                 f"{row['rounds']} interleaved rounds)")
    if row.get("within_noise"):
        text += ", within noise"
    return text


def speedup_cell(row: dict | None) -> str:
    """A speed-up for a table cell: "2.10x", "1.02x~" when within noise, "-" unmeasured."""
    if not row:
        return "-"
    return f"{row['speedup']:.2f}x" + ("~" if row.get("within_noise") else "")


#: The footnote of tables whose speed-up cells use `speedup_cell`.
NOISE_NOTE = "~: within noise (the speed-up's IQR over interleaved rounds includes 1)"


def latency_table(before: nn.Module, after: nn.Module, example: torch.Tensor,
                  batch_sizes=(1, 64), threads: int | None = None,
                  min_run_time: float = 0.5, rounds: int = LATENCY_ROUNDS) -> list[dict]:
    """Latency of both models at each batch size, interleaved over `rounds` rounds: the
    medians with their IQRs, and the speed-up's median and IQR over the rounds."""
    rows = []
    threads = threads or torch.get_num_threads()
    for batch in batch_sizes:
        x = example[:1].expand(batch, *example.shape[1:]).contiguous()
        first, second = interleaved_latency(before, after, x, threads, min_run_time, rounds)
        rows.append(latency_row(first, second, batch, str(x.device), threads))
    return rows
