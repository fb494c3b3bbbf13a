#!/usr/bin/env bash
# Every benchmark report under benchmarks/results/, dated today, in one command (about
# 15 minutes on a quiet 2-core CPU). Run from the repository root in jaxrobust's virtualenv;
# with the PyTorch peers installed (bash benchmarks/install_peers.sh) the peer columns are
# measured too. Run nothing else meanwhile: the reports are timings.
set -euo pipefail
cd "$(dirname "$0")/.."
for script in pgd_throughput kernels scaling memory compile_time eval_standard; do
  echo "== benchmarks/$script.py"
  python "benchmarks/$script.py"
done
echo "== benchmarks/apgd_strength.py" && python benchmarks/apgd_strength.py  # trains 2 models
