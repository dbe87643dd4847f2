#!/usr/bin/env bash
# The DEQ toolbox v2 on MNIST, one option per row, side by side with JFB: the default recipe at the demo's
# budget (3 epochs, Picard at depths 2, 4, 6, shifts, batch 256, seed 0), one run after the other.
# The learned initial state (Skip-DEQ) only saves work when the solve stops at a tolerance, so its pair of
# rows runs Picard to a relative tolerance of 1e-2 (at most 30 deep) instead of the fixed depths.
# Usage: scripts/toolbox-v2.sh [OUT_DIR] [EXTRA jfb train FLAGS...]  (results: OUT_DIR/summary.md, .csv)
set -euo pipefail
out=${1:-runs/toolbox-v2}
shift || true
mkdir -p "$out"
tolerance=(--tol 1e-2 --stop-mode rel --max-iter 30 --depth-start none)
run() {
    local name=$1
    shift
    echo "== $name: jfb train mnist --epochs 3 $*"
    python -m jfb train mnist --epochs 3 --seed 0 --out "$out/$name" "$@" "${EXTRA[@]}" >"$out/$name.log" 2>&1
}
EXTRA=("$@")
run jfb
run reversible --backward reversible --solver reversible
run dropout --latent-dropout 0.1
run weight-norm --latent-norm weight
run spectral-norm --latent-norm spectral
run mixed-init --init mixed
run tolerance-zeros "${tolerance[@]}"
run tolerance-learned "${tolerance[@]}" --init learned
python -m jfb bench memory --methods jfb,reversible --depths 6,60 --batch-size 256 --out "$out/memory" >"$out/memory.log" 2>&1
python scripts/toolbox_summary.py "$out"
