"""Speed-up from removing dead filters, against the MAC reduction, measured in one run.

BasicNet (full width, CIFAR-shaped 3x32x32 inputs) with dead filters in the layer pattern
the paper reports for Adam + L2 1e-4 on CIFAR-10 (supplement Table 1: 70% of all filters):
in each layer that share of filters gets gamma = 0 and beta < 0. The model is pruned with
`prune_model`; latency of the original and the slim model is measured alternately with
torch.utils.benchmark at batch 1 and 64, threads fixed. Target: speed-up at batch 64
>= 0.7 x the MAC reduction.

    python benchmarks/prune_speed.py [--threads 2] [--min-run-time 2]
"""

from __future__ import annotations

import argparse

import torch

from implicit_sparsity.models import build_model, feature_layers
from implicit_sparsity.prune import prune_model

#: % of filters with |gamma| < 1e-3 per layer, Adam + L2 1e-4, CIFAR-10 (supplement Table 1).
PAPER_PATTERN = {"C1": 44, "C2": 22, "C3": 6, "C4": 45, "C5": 54, "C6": 96, "C7": 95}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--min-run-time", type=float, default=2.0)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = build_model("basicnet", in_channels=3, num_classes=10)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, block in feature_layers(model):
            n = block.bn.num_features
            dead = torch.randperm(n, generator=generator)[:round(n * PAPER_PATTERN[name] / 100)]
            block.bn.weight[dead] = 0.0
            block.bn.bias[dead] = -0.1
        model.train()
        for _ in range(3):  # realistic running statistics
            model(torch.randn(64, 3, 32, 32, generator=generator))
    model = model.to(device).eval()
    x = torch.randn(64, 3, 32, 32, generator=generator).to(device)
    result = prune_model(model, x, check_data=[x], latency_batches=(1, 64),
                         threads=args.threads, min_run_time=args.min_run_time)
    print(result.table())
    by_batch = {row["batch"]: row["speedup"] for row in result.latency}
    print(f"MAC reduction {result.mac_reduction:.2f}x; measured speed-up batch 1: "
          f"{by_batch[1]:.2f}x, batch 64: {by_batch[64]:.2f}x "
          f"({by_batch[64] / result.mac_reduction:.2f} of the MAC reduction, target >= 0.7)")


if __name__ == "__main__":
    main()
