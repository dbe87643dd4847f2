#!/usr/bin/env bash
# Re-measures the documentation's numbers that had no results file: the demo, the four examples, the step
# of every backward mode against the floor (with the three IFT linear solvers) and the bf16 step.
#
#   scripts/remeasure-docs.sh        writes docs/results/remeasured/ (OUT=... to write elsewhere); ~20 min on 2 cores
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-docs/results/remeasured}"
mkdir -p "$OUT"
{ lscpu | grep "Model name"; lscpu | grep -o "avx512_bf16\|amx_bf16" | sort -u | tr '\n' ' '; echo;
  python -c "import torch; print('torch', torch.__version__, torch.get_num_threads(), 'threads')"; date -u; git rev-parse --short HEAD; } > "$OUT/machine.txt"
seconds() { local start=$SECONDS; "$@"; echo "$((SECONDS - start)) s" >&2; }
seconds jfb demo --out runs/remeasure-demo --no-progress --json > "$OUT/demo.json" 2> "$OUT/demo.log"
cp runs/remeasure-demo/metrics.csv "$OUT/demo-metrics.csv"
for example in mlp_mnist adding_problem deblurring autopilot; do
  seconds python "examples/$example.py" > "$OUT/example-$example.txt" 2>&1
done
jfb bench step --ks 10,40 --methods jfb,neumann:2,ift,ift:cg,ift:gmres,unroll --out "$OUT/step-methods" --no-progress
jfb bench step --ks 10,40 --methods jfb --precisions fp32,bf16 --out "$OUT/step-precision" --no-progress
