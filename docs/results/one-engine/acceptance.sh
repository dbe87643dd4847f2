# usage: SRC=CHECKOUT bash acceptance.sh OUTDIR: the trainings whose weights and numbers must not change, and their hashes
set -e
O=$1; rm -rf $O; mkdir -p $O
cd "${SRC:-.}"  # the checkout to measure (its own jfb is imported from the working directory)
python -c "import sys; from jfb.cli.main import main; sys.exit(main(sys.argv[1:]))" train mnist --deterministic --limit-train 2048 --limit-test 1000 --epochs 2 --out $O/m1 --no-progress > $O/m1.log 2>&1
python -c "import sys; from jfb.cli.main import main; sys.exit(main(sys.argv[1:]))" train mnist --deterministic --limit-train 1024 --limit-test 500 --epochs 2 --warm-start --ema-decay 0.9 --checkpoint-every 3 --schedule step --step-size 1 --out $O/m2 --no-progress > $O/m2.log 2>&1
python - $O <<'PY'
import sys, hashlib, json, torch
from pathlib import Path
O = Path(sys.argv[1])
for run in ["m1", "m2"]:
    from jfb.train import load_checkpoint
    ck = load_checkpoint(O/run/"best.pt")
    h = hashlib.sha256(b"".join(v.numpy().tobytes() for v in ck["model"].values())).hexdigest()
    print(run, "best.pt model sha", h[:16])
    import csv
    rows = list(csv.DictReader(open(O/run/"metrics.csv")))
    print(run, "metrics", [{k: v for k, v in r.items() if "time" not in k and "per_s" not in k and "_s" != k[-2:]} for r in rows])
from jfb.workloads import WORKLOADS
import dataclasses
torch.use_deterministic_algorithms(True)
for name, w in WORKLOADS.items():
    config = dataclasses.replace(w.config(), **w.smoke)
    t = w.train(config, log=lambda m: None)
    print(name, "losses sha", hashlib.sha256(json.dumps(t.result.losses).encode()).hexdigest()[:16], t.result.losses[-1], t.metrics)
PY
