"""A time and memory bound on the removal's analysis, so a model that makes torch-pruning's
dependency analysis run for minutes or grow by gigabytes (a large transformer) is refused
in one line, naming the layer being analysed, instead of hanging or swapping the machine.

A timer signal checks the elapsed time and the process's resident memory five times a
second and interrupts the analysis when either is over its budget. Signals reach the main
thread only: elsewhere (a worker thread) the analysis runs unbounded, as before.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from typing import Callable

from implicit_sparsity import defaults
from implicit_sparsity.errors import AnalysisBudgetError

CHECK_EVERY_SECONDS = 0.2


class _OverBudget(BaseException):
    """Raised by the timer inside the analysis; a BaseException so that the analysis' own
    `except Exception` (which keeps a layer's channels when torch-pruning fails) lets it
    through to `analysis_budget`, which turns it into one AnalysisBudgetError."""


def resident_bytes() -> int | None:
    """The process's resident memory, or None where /proc is not there."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def available_bytes() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


@contextlib.contextmanager
def analysis_budget(where: Callable[[], str], seconds: float = defaults.ANALYSIS_SECONDS,
                    memory_share: float = defaults.ANALYSIS_MEMORY_SHARE):
    """Run the block under the budget; `where()` names what was being analysed when it ran
    out. `seconds` <= 0 or inf: no time bound."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(
            signal, "setitimer"):
        yield
        return
    start, base, free = time.monotonic(), resident_bytes(), available_bytes()
    memory = int(free * memory_share) if base is not None and free else None

    def check(signum, frame):
        if 0 < seconds < float("inf") and time.monotonic() - start > seconds:
            raise _OverBudget(f"ran past {seconds:g} s")
        now = resident_bytes() if memory is not None else None
        if now is not None and now - base > memory:
            raise _OverBudget(f"grew by more than {memory / 2**30:.1f} GiB "
                              f"({memory_share:.0%} of the memory available)")

    previous = signal.signal(signal.SIGALRM, check)
    signal.setitimer(signal.ITIMER_REAL, CHECK_EVERY_SECONDS, CHECK_EVERY_SECONDS)
    try:
        yield
    except _OverBudget as over:
        raise AnalysisBudgetError(
            f"the removal's analysis {over} at {where()}: refused, nothing removed (prune "
            "--analysis-seconds / analysis_seconds= gives it longer)") from None
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0, 0)
        signal.signal(signal.SIGALRM, previous)
