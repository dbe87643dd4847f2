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
# the memory layout: one synthetic MNIST-shaped epoch each way
jfb bench epoch mnist --samples 10000 --channels-last --out "$OUT/epoch-channels-last" --no-progress
jfb bench epoch mnist --samples 10000 --no-channels-last --out "$OUT/epoch-nchw" --no-progress
# data-parallel throughput on this machine: 1 process vs 2 (gloo), one epoch on 10,000 images, global batch 100
common=(--epochs 1 --limit-train 10000 --batch-size 100 --no-progress)
jfb train mnist "${common[@]}" --out runs/remeasure-ddp1 > /dev/null
python -m torch.distributed.run --standalone --nproc-per-node 2 -m jfb train mnist "${common[@]}" --threads 1 \
  --out runs/remeasure-ddp2 > /dev/null
cp runs/remeasure-ddp1/metrics.csv "$OUT/ddp-1-process-metrics.csv"
cp runs/remeasure-ddp2/metrics.csv "$OUT/ddp-2-processes-metrics.csv"
