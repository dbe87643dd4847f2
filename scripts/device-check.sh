#!/usr/bin/env bash
# One prepared GPU check: a few minutes on one GPU machine -> measured numbers, as Markdown and CSV.
#
#   scripts/device-check.sh            on a machine with a CUDA GPU (under 8 minutes on one H100)
#   scripts/device-check.sh --dry-run  on CPU with tiny sizes: every step once (CI runs this)
#
# Writes under $OUT when set (the device tool brings those files back), else runs/device-check/:
# summary.md (card, versions, nvidia-smi, every step's status and time, all tables), step.csv,
# epoch.csv, memory.csv, mnist-epoch.csv, mnist-recipe.csv, zoo.csv, log.txt: 8 files, at most two
# folders deep, as the device tool asks. Needs only Python with torch, numpy, tqdm (the GPU image
# has them; nothing is fetched): the package is used from this checkout. The workloads (jfb bench
# zoo) run under torchdeq too when it can be imported (carry its wheel: the device tool's notes say
# how); otherwise under torch-jfb's engines only. Idempotent: every run starts its work folder
# afresh. A failing step is recorded and the next one runs.
set -uo pipefail
cd "$(dirname "$0")/.."
DRY=0
[ "${1:-}" = "--dry-run" ] && DRY=1
OUT="${OUT:-runs/device-check}"
PY="${PYTHON:-python3}"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/jfb-device-check.XXXXXX")"
mkdir -p "$OUT"
rm -f "$OUT"/summary.md "$OUT"/*.csv "$OUT"/log.txt
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
LOG="$OUT/log.txt"
SUMMARY="$OUT/summary.md"

if [ "$DRY" = 1 ]; then
  DEVICE=cpu; LIMIT=300
  STEP_SMALL=(--ks 2 --methods jfb --batch-size 8 --repeats 2 --warmup 1 --operators module,function --solves fixed,tolerance)
  STEP_LARGE=(--ks 2 --methods jfb --batch-size 16 --repeats 2 --warmup 1)
  PRECISION=(--ks 2 --methods jfb --batch-size 8 --repeats 2 --warmup 1 --precisions fp32,bf16)
  COMPILE=()  # torch.compile on a CPU costs a minute of C++ builds: the dry run only checks the flags exist
  MNIST_EPOCH=(--epochs 1 --limit-train 256 --limit-test 128)
  RECIPE=()
  CIFAR=(--samples 64 --batch-size 32 --precisions fp32,bf16)
  MEMORY=(--depths 2,4 --methods jfb,unroll,reversible --model elementwise --batch-size 8)
  ZOO=(--smoke --steps 3)
else
  DEVICE=cuda; LIMIT=240
  STEP_SMALL=(--ks 10,40 --methods jfb,ift --batch-size 128 --operators module,function --solves fixed,tolerance)
  STEP_LARGE=(--ks 10,40 --methods jfb --batch-size 1024)
  PRECISION=(--ks 10 --methods jfb --batch-size 1024 --precisions fp32,bf16,fp16)
  COMPILE=(--ks 10 --methods jfb --batch-size 1024 --precisions fp32,bf16 --compile --repeats 20)
  MNIST_EPOCH=(--epochs 1)
  RECIPE=(--test-every-epoch)
  CIFAR=(--samples 50000 --precisions fp32,bf16)
  MEMORY=(--depths 10,100,500 --methods jfb,unroll,reversible --model mnist --batch-size 128)
  ZOO=()  # each workload at its own size
fi
ENGINES=jfb,ift,unroll
"$PY" -c "import torchdeq" 2> /dev/null && ENGINES=jfb,torchdeq-jfb,ift,torchdeq-ift,unroll

echo "# Device check ($([ "$DRY" = 1 ] && echo "dry run on CPU" || echo "GPU"), $(date -u '+%Y-%m-%d %H:%M UTC'))" > "$SUMMARY"
SMI="$WORK/nvidia-smi.txt"
if command -v nvidia-smi > /dev/null; then
  nvidia-smi > "$SMI" 2>&1
  CARD="$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | head -1)"
else
  echo "nvidia-smi not found" > "$SMI"; CARD="none (CPU)"
fi
{
  echo; echo "- card: $CARD"
  echo "- $("$PY" -c 'import torch, platform; print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, Python {platform.python_version()}, {torch.get_num_threads()} CPU threads")')"
  echo "- commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  echo; echo "| step | status | seconds |"; echo "|---|---|---|"
} >> "$SUMMARY"
TABLES="$WORK/tables.md"; : > "$TABLES"

# step NAME COMMAND...: run with a time limit, log its output, record status and seconds
step() {
  local name="$1"; shift
  local started=$SECONDS status
  echo "== $name: $*" >> "$LOG"
  timeout "$LIMIT" "$@" >> "$LOG" 2>&1
  case $? in 0) status=ok ;; 124) status="timed out (${LIMIT} s)" ;; *) status=failed ;; esac
  echo "| $name | $status | $((SECONDS - started)) |" >> "$SUMMARY"
  echo "$name: $status ($((SECONDS - started)) s)"
}
# table TITLE FILE: add a Markdown table to the summary
table() { [ -f "$2" ] && { echo; echo "## $1"; echo; cat "$2"; } >> "$TABLES"; }
jfb() { "$PY" -m jfb "$@" --no-progress; }

step "CUDA tests" "$PY" -m pytest -q -p no:cacheprovider -m cuda tests/test_cuda.py
step "bench step, small batch" jfb bench step --device "$DEVICE" "${STEP_SMALL[@]}" --out "$WORK/step-small"
step "bench step, large batch" jfb bench step --device "$DEVICE" "${STEP_LARGE[@]}" --out "$WORK/step-large"
step "bench step, autocast precisions" jfb bench step --device "$DEVICE" "${PRECISION[@]}" --out "$WORK/step-precision"
if [ ${#COMPILE[@]} -gt 0 ]; then
  step "bench step, torch.compile" jfb bench step --device "$DEVICE" "${COMPILE[@]}" --out "$WORK/step-compile"
else
  step "bench step --compile (flag only)" jfb bench step --help
fi
step "jfb train mnist, one epoch" jfb train mnist --device "$DEVICE" "${MNIST_EPOCH[@]}" --out "$WORK/mnist-epoch"
if [ ${#RECIPE[@]} -gt 0 ]; then
  step "jfb train mnist, default recipe" jfb train mnist --device "$DEVICE" "${RECIPE[@]}" --out "$WORK/mnist-recipe"
fi
step "CIFAR-10-shaped epoch, synthetic data" jfb bench epoch cifar10 --device "$DEVICE" "${CIFAR[@]}" --out "$WORK/epoch"
step "peak memory vs depth" jfb bench memory --device "$DEVICE" "${MEMORY[@]}" --out "$WORK/memory"
for workload in prefix-sums chains lm state-tracking mazes sudoku; do
  SIZE=("${ZOO[@]}")
  # mazes' own 6000 steps (sudoku's 3000) under five engines would pass the step's time limit: a tenth of them
  [ "$workload" = mazes ] && [ "$DRY" != 1 ] && SIZE=(--steps 600)
  [ "$workload" = sudoku ] && [ "$DRY" != 1 ] && SIZE=(--steps 300)
  step "workload $workload, engines $ENGINES" jfb bench zoo --device "$DEVICE" --workloads "$workload" \
    --engines "$ENGINES" "${SIZE[@]}" --out "$WORK/zoo-$workload"
done

for kind in small large precision compile; do
  table "Training step vs the floor ($kind)" "$WORK/step-$kind/step.md"
done
table "One epoch on synthetic CIFAR-10-shaped data" "$WORK/epoch/epoch.md"
table "Peak memory of a training step vs depth" "$WORK/memory/memory.md"
for workload in prefix-sums chains lm state-tracking mazes sudoku; do
  table "Workload $workload, side by side (jfb bench zoo)" "$WORK/zoo-$workload/zoo.md"
done
"$PY" - "$WORK" "$OUT" "$TABLES" <<'PYTHON'
"""Merge the step CSVs; copy the run metrics; one table of the MNIST runs."""
import csv, json, pathlib, sys
work, out, tables = map(pathlib.Path, sys.argv[1:])
rows = []
for kind in ("small", "large", "precision", "compile"):
    path = work / f"step-{kind}" / "step.csv"
    if path.exists():
        rows += list(csv.DictReader(path.open()))
if rows:
    with (out / "step.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader(), writer.writerows(rows)
for name in ("epoch", "memory"):
    source = work / name / f"{name}.csv"
    if source.exists():
        (out / f"{name}.csv").write_text(source.read_text())
zoo = [row for w in ("prefix-sums", "chains", "lm", "state-tracking", "mazes", "sudoku") if (work / f"zoo-{w}" / "zoo.csv").exists()
       for row in csv.DictReader((work / f"zoo-{w}" / "zoo.csv").open())]
if zoo:
    with (out / "zoo.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(zoo[0]))
        writer.writeheader(), writer.writerows(zoo)
lines = []
for name in ("mnist-epoch", "mnist-recipe"):
    metrics = work / name / "metrics.jsonl"
    if metrics.exists():
        (out / f"{name}.csv").write_text((work / name / "metrics.csv").read_text())
        records = [json.loads(line) for line in metrics.read_text().splitlines()]
        best = max(records, key=lambda r: r["val_acc"])
        lines.append(f"| {name} | {len(records)} | {sum(r['epoch_time_s'] for r in records):.1f} | "
                     f"{records[0]['epoch_time_s']:.1f} | {records[-1]['test_acc']:.2f} | {best['test_acc']:.2f} |")
if lines:
    with tables.open("a") as f:
        f.write("\n## MNIST training (jfb train mnist)\n\n| run | epochs | training s | first epoch s | test % last | test % val-selected |\n"
                "|---|---|---|---|---|---|\n" + "\n".join(lines) + "\n")
PYTHON
cat "$TABLES" >> "$SUMMARY"
{ echo; echo "## nvidia-smi"; echo; echo '```'; cat "$SMI"; echo '```'; } >> "$SUMMARY"
rm -rf "$WORK"
echo "summary: $SUMMARY"
! grep -q "| failed |\|timed out" "$SUMMARY"
