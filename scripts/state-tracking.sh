#!/usr/bin/env bash
# The state-tracking comparison of docs/results/state-tracking.md: one group, the implicit model (JFB, IFT), the
# same block unrolled at its training depth, and stacks of 1, 2 and 4 untied blocks at about the implicit model's
# parameter count; every model the same steps, batch, learning rate and seed. Usage:
#   scripts/state-tracking.sh GROUP OUT [extra flags for every run, e.g. --steps 20]
# Writes OUT/ENGINE/ (each run's folder), OUT/state-tracking.csv (every run's rows: length, test budget, accuracy)
# and OUT/state-tracking.png (accuracy at the largest budget against length, one line per model).
set -euo pipefail
group=${1:?group: s3, a5 or s5}
out=${2:?output folder}
shift 2
mkdir -p "$out"
runs=("jfb 32" "ift 32" "unroll 32" "stack:1 32" "stack:2 24" "stack:4 16")
for run in "${runs[@]}"; do
  read -r engine width <<<"$run"
  jfb train state-tracking --group "$group" --engine "$engine" --width "$width" --out "$out/${engine/:/-}" \
    --overwrite --no-progress "$@" >/dev/null
done
python - "$out" "${runs[@]}" <<'PYTHON'
"""One CSV of every run's rows, with its engine, width and parameters."""
import csv, json, pathlib, sys
out = pathlib.Path(sys.argv[1])
rows = []
for run in sys.argv[2:]:
    engine, width = run.split()
    folder = out / engine.replace(":", "-")
    metrics = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()][-1]
    for row in csv.DictReader((folder / "state-tracking.csv").open()):
        rows.append({"engine": engine, "width": width, "parameters": metrics["parameters"], **row})
with (out / "state-tracking.csv").open("w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=list(rows[0]))
    writer.writeheader(), writer.writerows(rows)
print(f"{len(rows)} rows in {out / 'state-tracking.csv'}")
try:
    import matplotlib
except ImportError:
    print("no matplotlib: no plot (pip install 'torch-jfb[plot]')")
else:
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from jfb.workloads.state_tracking import plot_comparison
    plot_comparison(plt, out / "state-tracking.png", rows)
PYTHON
