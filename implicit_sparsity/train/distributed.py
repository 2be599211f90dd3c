"""Data-parallel training across processes (torchrun), for ImageNet-scale single runs.

`torchrun --nproc_per_node N -m implicit_sparsity train ...` starts N processes; each sees
RANK / WORLD_SIZE / LOCAL_RANK and joins one process group (NCCL on GPUs, gloo on CPUs).
Every global mini-batch of `batch_size` is split evenly between the processes, gradients
are averaged by DistributedDataParallel, and only rank 0 writes the run folder. BatchNorm
statistics are per process (PyTorch's usual DDP behaviour), so a run on N processes is
not bit-identical to one on a single process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from implicit_sparsity.errors import ConfigError


@dataclass(frozen=True)
class Cluster:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    initialized_here: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0


def join(device_name: str) -> tuple[Cluster, str]:
    """Join the process group torchrun describes (if any); returns the cluster and the
    device name this process should use."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Cluster(), device_name
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and device_name in ("auto", "cuda") or \
        device_name.startswith("cuda")
    initialized_here = not dist.is_initialized()
    if initialized_here:
        dist.init_process_group("nccl" if use_cuda else "gloo")
    device = f"cuda:{local_rank}" if use_cuda else "cpu"
    if use_cuda:
        torch.cuda.set_device(local_rank)
    return Cluster(rank, world, local_rank, initialized_here), device


def check_batch(batch_size: int, cluster: Cluster) -> None:
    if batch_size % cluster.world:
        raise ConfigError(f"batch_size {batch_size} must be divisible by the {cluster.world} "
                          "processes of a distributed run")


def all_sum(tensor: torch.Tensor, cluster: Cluster) -> torch.Tensor:
    if cluster.world > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def barrier(cluster: Cluster) -> None:
    if cluster.world > 1:
        dist.barrier()


def leave(cluster: Cluster) -> None:
    if cluster.world > 1 and cluster.initialized_here and dist.is_initialized():
        dist.destroy_process_group()
