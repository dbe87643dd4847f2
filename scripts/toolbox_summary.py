"""Summarise scripts/toolbox-v2.sh's runs: one row per run directory (OUT/summary.md and OUT/summary.csv)."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path
from statistics import mean


def summary(run_dir: Path) -> dict:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    chosen = max(records, key=lambda r: (r["val_acc"], r["epoch"]))
    tested = [r for r in records if r["test_acc"] == r["test_acc"]]
    return {
        "run": run_dir.name,
        "epoch_s": round(mean(r["epoch_time_s"] for r in records), 1),
        "train_t_evals_per_solve": round(mean(r["train_forward_iters_mean"] for r in records), 2),
        "test_t_evals_per_solve": round(tested[-1]["test_forward_iters_mean"], 2),
        "val_acc": chosen["val_acc"],
        "test_acc_val_selected": chosen["test_acc"],
        "j_products_per_epoch": round(mean(r["j_matvecs"] for r in records)),
    }


def main(out: Path) -> None:
    rows = [summary(d) for d in sorted(out.iterdir()) if (d / "metrics.jsonl").is_file()]
    order = ["jfb", "reversible", "dropout", "weight-norm", "spectral-norm", "mixed-init", "tolerance-zeros"]
    rows.sort(key=lambda r: order.index(r["run"]) if r["run"] in order else len(order))
    base = {r["run"]: r["epoch_s"] for r in rows}
    with open(out / "summary.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    lines = [
        "| run | epoch | vs baseline | T evals / solve (train, test) | validation | test | J products / epoch |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        baseline = base["tolerance-zeros"] if r["run"].startswith("tolerance") else base["jfb"]
        lines.append(
            f"| {r['run']} | {r['epoch_s']} s | {r['epoch_s'] / baseline:.2f}x | {r['train_t_evals_per_solve']}, "
            f"{r['test_t_evals_per_solve']} | {r['val_acc']:.2f}% | {r['test_acc_val_selected']:.2f}% | "
            f"{r['j_products_per_epoch']} |"
        )
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "runs/toolbox-v2"))
