#!/usr/bin/env bash
# The GPU checks in one go, about 3 minutes on one modern GPU (6 at most): the tests that need
# CUDA (a CUDA-graph training step computes what the eager step computes, single and packed;
# strict fp32 by default), the speed benchmark at the paper's BasicNet width and at 0.25, then
# training throughput against a plain loop with step_capture: compile (torch.compile, checked
# against eager at its first step; random images in Fashion-MNIST's files).
#
#     bash benchmarks/gpu_check.sh            # from the repository root
#
# Needs a CUDA build of PyTorch with numpy, pyyaml, tqdm and pytest (no install of this package:
# it runs from the checkout). Tests write their own small data sets.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -n "${OUT:-}" ]; then  # a folder whose files come back (the device tool's): keep a log
  exec > >(tee "$OUT/gpu_check.log") 2>&1
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PYTHON=${PYTHON:-python3}
"$PYTHON" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; \
print(torch.__version__, torch.cuda.get_device_name(0))"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,memory.total --format=csv || true
"$PYTHON" -m pytest -q -p no:cacheprovider tests/test_gpu.py tests/test_capture.py
"$PYTHON" benchmarks/speed.py --width 1 --images 20000 --pack 8
"$PYTHON" benchmarks/speed.py --width 0.25 --images 20000 --pack 8
"$PYTHON" benchmarks/train_throughput.py --width 1 --images 20000 --synthetic --compile
