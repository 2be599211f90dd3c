"""Settings of the device that trade nothing the user did not ask for: TF32 off unless
allowed, cuDNN autotuning, and, on request, flushing denormal floats on the CPU.

Denormals: Adam + L2 drives the weights of dead filters below 1.2e-38, where x86 CPUs
compute up to 100x slower; late epochs of such a run take twice as long. Flush-to-zero
(FTZ/DAZ) treats them as 0, which changes results only in those negligible values, so it is
an option (`flush_denormal`), off by default. It is a per-thread CPU flag that PyTorch's
worker threads copy from the main thread when they start: it must be set before the first
parallel operation of the process, which `flush_denormals_everywhere` checks.
"""

from __future__ import annotations

import torch

from implicit_sparsity.errors import ConfigError, RunStateError

#: Elements in the probe: enough for every intra-op thread to get a share of it.
_PROBE_SIZE = 1 << 20
#: What this process's runs have set so far (None: no run yet).
_flushing: bool | None = None


def device_speed_settings(config, device: torch.device) -> None:
    """TF32 (PyTorch lets cuDNN use it by default), cuDNN autotuning, denormal flushing."""
    if device.type == "cuda":
        torch.backends.cudnn.allow_tf32 = config.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = config.allow_tf32
        torch.backends.cudnn.benchmark = config.cudnn_benchmark
    global _flushing
    if _flushing is not None and _flushing != config.flush_denormal:
        raise RunStateError(
            f"flush_denormal: this process trained with flush_denormal={_flushing} before, and "
            "its CPU threads keep that setting; train this run in a fresh process")
    if config.flush_denormal and not _flushing:
        flush_denormals_everywhere()
    _flushing = config.flush_denormal


def flush_denormals_everywhere() -> None:
    """Turn on FTZ/DAZ and check, on a parallel operation, that every CPU thread has it."""
    if not torch.set_flush_denormal(True):
        raise ConfigError("flush_denormal: this CPU cannot flush denormal floats")
    denormals = torch.arange(1, _PROBE_SIZE + 1, dtype=torch.int32).view(torch.float32)
    if bool((denormals * 1.0).any()):
        raise RunStateError(
            "flush_denormal: PyTorch's CPU threads started before it was set, so only some "
            "of them would flush; set it in a fresh process (the command line does), or call "
            "torch.set_flush_denormal(True) before any other torch work")
