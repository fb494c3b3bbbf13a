#!/usr/bin/env bash
# The PyTorch peers the benchmarks compare against (benchmark-only; never a dependency of
# jaxrobust): CPU-only PyTorch, torchattacks and the reference AutoAttack (pyautoattack).
# torchattacks' declared torchvision/requests pins are not needed for the attacks we run,
# so it is installed without dependencies (torchvision would pull a CUDA build of torch).
set -euo pipefail
# torch 2.13.0 (CPU build): on this machine pip takes it from a local file; elsewhere add
# --index-url https://download.pytorch.org/whl/cpu to avoid a multi-GB CUDA build.
python -m pip install "torch==2.13.0"
python -m pip install --no-deps "torchattacks==3.5.1" "pyautoattack==0.2.0"
python -m pip install scipy tqdm
