#!/usr/bin/env bash
# The in-process backend's GPU checks in one command, on a machine with a CUDA device:
#
#     bench/gpu_check.sh            # with .venv/bin/python
#     PYTHON=python3 bench/gpu_check.sh
#
# It says which device torch sees and the dtype intro chooses for it (runtime/backends/precision.py), then
# runs tests/runtime/test_gpu.py (tiny models on CUDA against the CPU: greedy agreement, score closeness,
# steering, activations, LoRA, memory-sized batches, a real out-of-memory halving, a study end to end) and
# the CPU tests of the same code paths in bfloat16 and float16. It needs a CUDA build of torch:
# requirements.lock pins the CPU build (`torch==...+cpu`), which sees no device, and then this script stops
# with exit status 2 rather than report skipped tests as a pass.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"

"$PY" - <<'EOF'
import sys

import torch

from intro.runtime.backends.precision import device_dtype
from intro.runtime.backends.local_model import available_memory

if not torch.cuda.is_available():
    print(f"no CUDA device for torch {torch.__version__}: install a CUDA build to run the GPU checks")
    sys.exit(2)
device = torch.device("cuda")
name, (major, minor) = torch.cuda.get_device_name(device), torch.cuda.get_device_capability(device)
free = available_memory(device)
print(f"{name}: compute capability {major}.{minor}, {free / 2**30:.1f} GiB free, torch {torch.__version__}")
print(f"intro computes in {device_dtype(device)} here (INTRO_DTYPE overrides)")
EOF

exec "$PY" -m pytest -p no:cacheprovider -rs \
  tests/runtime/test_gpu.py tests/runtime/test_half_precision.py tests/runtime/test_batching.py \
  tests/runtime/test_precision.py "$@"
