"""Results pages quote their committed files: every number of a page's table is the one in its CSV."""

from __future__ import annotations

import ast
import csv
import re
from pathlib import Path

import pytest
from modules import from_file

from jfb.workloads import WORKLOADS

RESULTS = Path(__file__).resolve().parents[1] / "docs" / "results"


def _budget_cell(row: dict[str, str]) -> str:
    """A test-time compute table's cell: the accuracy at a budget and the mean iterations it used."""
    return f"{float(row['accuracy']):.2f} ({float(row['iterations']):.0f})"


def _table_rows(page: Path | str) -> list[list[str]]:
    """The rows of every table of a page (or of a page's text)."""
    rows = []
    for line in (page.read_text() if isinstance(page, Path) else page).splitlines():
        if line.startswith("|") and not line.startswith("|---"):
            rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


def test_the_workloads_table_is_zoo_csv():
    page_rows = {(r[0], r[1]): r for r in _table_rows(RESULTS / "workloads" / "README.md") if len(r) == 9}
    measured = list(csv.DictReader((RESULTS / "workloads" / "zoo.csv").open()))
    assert len(measured) == 15
    for row in measured:
        cells = page_rows[row["workload"], row["engine"]]
        for cell, key, decimals in (
            (3, "value", 3),
            (4, "ms_per_step", 1),
            (5, "time_vs_first", 2),
            (7, "saved_mib", 1),
        ):
            assert _rounded_from(cells[cell], row[key], decimals), (row["workload"], row["engine"], key)
        assert float(cells[8]) == float(row["final_train_loss"])


def _rounded_from(shown: str, measured: str, decimals: int) -> bool:
    """``shown`` is ``measured`` rounded to ``decimals`` places (either way at a tie)."""
    return abs(float(shown) - float(measured)) <= 0.5 * 10**-decimals + 1e-9


def test_the_deploy_tables_are_their_files():
    import json

    rows = _table_rows(RESULTS / "deploy.md")
    served = {(r[0].split(" (")[0].removesuffix(" program"), r[1]): r for r in rows if len(r) == 4 and r[1].isdigit()}
    measured = [r for r in csv.DictReader((RESULTS / "deploy" / "bench-deploy.csv").open()) if r["test_acc"]]
    assert len(measured) == len(served) == 8
    for row in measured:
        cells = served[row["way"], row["batch"]]
        assert _rounded_from(cells[2], row["ms"], 3) and float(cells[3]) == float(row["test_acc"])
    exported = {(r[0], r[1]): r for r in rows if len(r) == 8}
    for line in (RESULTS / "deploy" / "exports.jsonl").read_text().splitlines():
        result = json.loads(line)
        cells = exported[result["checkpoint"], {"onnx": "ONNX", "pt2": "pt2"}[result["format"]]]
        assert float(cells[6]) == result["agreement"] and float(cells[7]) == result["max_logit_difference"]
        if "exported_test_acc" in result:
            assert cells[5] == f"**{result['exported_test_acc']:.2f}%**"


def test_the_generation_tables_are_their_files():
    import json

    rows = {(r[0], r[1], r[2]): r for r in _table_rows(RESULTS / "generate.md") if len(r) == 7 and r[1].isdigit()}
    measured = list(csv.DictReader((RESULTS / "generate" / "generate.csv").open()))
    assert len(measured) == len(rows) == 18
    for row in measured:
        cells = rows[row["model"], row["bytes"], row["way"]]
        assert float(cells[3]) == float(row["bytes_per_s"]) and float(cells[5]) == float(row["iterations_per_byte"])
    page = (RESULTS / "generate.md").read_text()
    for line in (RESULTS / "generate" / "samples.jsonl").read_text().splitlines():
        sample = json.loads(line)
        assert f"```text\n{sample['prompts'][0]}{sample['texts'][0]}\n```" in page
        assert f"{sample['iterations_mean']} iterations per byte on average" in page


def test_the_state_tracking_table_is_its_file():
    rows = list(csv.DictReader((RESULTS / "state-tracking" / "s3.csv").open()))
    page = {r[0]: r for r in _table_rows(RESULTS / "state-tracking.md") if len(r) == 8 and r[1].isdigit()}
    names = {"jfb": "DEQ, JFB", "ift": "DEQ, IFT", "unroll": "same block unrolled (16)"}
    names.update({f"stack:{k}": f"{k} {'untied blocks' if k > 1 else 'block'}" for k in (1, 2, 4)})
    assert len(page) == 6
    for row in (r for r in rows if r["max_iter"] == "128"):
        cells = page[names[row["engine"]]]
        assert cells[1] == row["width"] and cells[2] == row["parameters"]
        assert float(cells[{"8": 3, "16": 4, "32": 5}[row["length"]]]) == float(row["accuracy"])


def test_the_iteration_cost_tables_are_their_files():
    rows = _table_rows(RESULTS / "performance.md")
    ab = {(r[0], r[1]): r for r in rows if len(r) == 6 and "x" in r[0] and r[0][0].isdigit()}
    measured = list(csv.DictReader((RESULTS / "overhead" / "ab" / "ab.csv").open()))
    assert len(measured) == 2 * len(ab) == 42
    column = {"base": 2, "head": 4}
    for row in measured:
        cells = ab[row["size"], row["way"]]
        assert _rounded_from(cells[column[row["side"]]], row["us_per_iteration"], 1), (row["size"], row["way"])
        assert _rounded_from(cells[column[row["side"]] + 1], row["vs_bare"], 2), (row["size"], row["way"])
    batches = {(r[0], r[1]): r for r in rows if len(r) == 5 and r[0] in ("10", "100") and r[1].isdigit()}
    measured = list(csv.DictReader((RESULTS / "overhead" / "host-batch.csv").open()))
    assert len(measured) == len(batches) == 14
    for row in measured:
        cells = batches[row["dim"], row["batch"]]
        for cell, key, decimals in ((2, "host_ms", 3), (3, "device_ms", 3), (4, "host_over_device", 2)):
            assert _rounded_from(cells[cell], row[key], decimals), (row["dim"], row["batch"], key)


def test_the_looped_reasoning_tables_are_their_files():
    import statistics

    rows = _table_rows(RESULTS / "looped.md")
    curve = {r[0]: r for r in rows if len(r) == 8 and r[0].isdigit()}
    measured = list(csv.DictReader((RESULTS / "looped" / "prefix-sums-512" / "eval.csv").open()))
    depths = sorted({int(r["max_iter"]) for r in measured})
    assert [cell for cell in next(r for r in rows if r[0] == "bits" and len(r) == 8)[1:]] == [str(d) for d in depths]
    for row in measured:
        cell = curve[row["bits"]][1 + depths.index(int(row["max_iter"]))]
        assert cell == _budget_cell(row), (row["bits"], row["max_iter"])
    scores = list(csv.DictReader((RESULTS / "looped" / "prefix-sums-path-independence.csv").open()))
    table = {r[0]: r for r in rows if len(r) == 7 and r[0].isdigit() and "." not in r[2]}
    assert len(table) == 5
    for bits, cells in table.items():
        mine = [r for r in scores if r["bits"] == bits]
        values = [float(r["score"]) for r in mine]
        assert cells[1:] == [
            mine[0]["max_iter"],
            str(len(mine)),
            f"{min(values):.6f}",
            f"{statistics.mean(values):.6f}",
            str(sum(int(r["right"]) for r in mine)),
            str(sum(int(r["converged"]) for r in mine)),
        ]


def test_the_multi_start_table_is_its_file():
    rows = {r[0]: r for r in _table_rows(RESULTS / "looped.md") if len(r) == 7 and r[0].isdigit() and "." in r[2]}
    measured = list(csv.DictReader((RESULTS / "looped" / "prefix-sums-multistart.csv").open()))
    assert len(rows) == 3 and len(measured) == 12
    for row in measured:
        cells = rows[row["bits"]]
        assert cells[1] == row["max_iter"] and cells[1 + int(row["starts"]).bit_length()] == row["accuracy"]
        if row["starts"] == "8":
            assert cells[6] == row["chose_zeros"]


@pytest.mark.parametrize(
    ("runs", "summary_file", "section"),
    [
        ("state-tracking-seed", "state-tracking-summary.csv", "### State tracking: three seeds"),
        ("lm-truncated-seed", "lm-truncated-summary.csv", "### A truncated backward solve: three seeds"),
        ("reasoning-seed", "reasoning-summary.csv", "### Prefix sums and chains: three seeds"),
        ("lm-default-seed", "lm-default-summary.csv", "### The library's default `ift` and unrolled training"),
        ("chains-levers-seed", "chains-levers-summary.csv", "### Chains: the backward-solve levers"),
        ("prefix-truncated-seed", "prefix-truncated-summary.csv", "### Prefix sums: the truncated solve"),
        ("chains-default-seed", "chains-default-summary.csv", "### The library's default `ift` on chains"),
        ("lm-output-seed", "lm-output-summary.csv", "## Three seeds, the Jacobian at the output"),
        ("lm-seed", "lm-summary.csv", "## Three seeds, the Jacobian at `u*`"),
    ],
)
def test_the_exact_gradients_tables_are_their_summaries_of_three_seeds(runs, summary_file, section):
    folder = RESULTS / "exact-gradients"
    _check_summary_table([folder / f"{runs}{seed}" for seed in range(3)], summary_file, section)


SUDOKU_34 = {"givens": "34", "max_iter": "256"}  # the training difficulty, at 256 iterations


@pytest.mark.parametrize(
    ("workload", "case", "summary_file", "section"),
    [
        ("sudoku", SUDOKU_34, "sudoku-34-summary.csv", "### Sudoku: three seeds, 34 givens"),
        ("sudoku", None, "sudoku-summary.csv", "### Sudoku: three seeds, 26 givens"),
        ("mazes", None, "mazes-summary.csv", "### Mazes: three seeds"),
    ],
)
def test_the_looped_exact_gradient_tables_are_their_summaries_of_three_seeds(workload, case, summary_file, section):
    """Seed 0 is the looped page's run of every engine side by side; seeds 1 and 2 ran the shared three."""
    folder = RESULTS / "exact-gradients"
    runs = [RESULTS / "looped" / f"{workload}-zoo", *(folder / f"{workload}-seed{seed}" for seed in (1, 2))]
    _check_summary_table(runs, summary_file, section, case)


@pytest.mark.parametrize(
    ("runs", "case", "summary_file", "section"),
    [
        ("state-tracking-shine-seed", None, "state-tracking-shine-summary.csv", "### State tracking: SHINE"),
        ("sudoku-shine-seed", SUDOKU_34, "sudoku-shine-34-summary.csv", "### Sudoku: SHINE"),
        ("sudoku-truncated-seed", SUDOKU_34, "sudoku-truncated-34-summary.csv", "### Sudoku: the truncated"),
        ("mazes-shine-seed", None, "mazes-shine-summary.csv", "### Mazes: SHINE and unrolled"),
        ("mazes-truncated-seed", None, "mazes-truncated-summary.csv", "### Mazes: the truncated"),
    ],
)
def test_the_looped_shine_unroll_and_truncated_tables_are_their_summaries(runs, case, summary_file, section):
    folder = RESULTS / "exact-gradients"
    _check_summary_table([folder / f"{runs}{seed}" for seed in range(3)], summary_file, section, case)


def _overview_rows() -> list[list[str]]:
    """The rows (workload, engine, mean, vs jfb, file) of the exact-gradients page's every-workload overview."""
    text = _section(RESULTS / "exact-gradients.md", "### Every workload, every engine")
    return [r for r in _table_rows(text) if len(r) == 5 and r[0] in WORKLOADS]


def test_every_workloads_overview_row_is_its_summary_file():
    """The overview's rows come from the summaries of the sections below it: each cell is its file's, rounded."""
    rows = _overview_rows()
    assert {r[0] for r in rows} == set(WORKLOADS) and len(rows) >= 30
    for workload, engine, mean, ratio, source in rows:
        if not source.endswith(".csv)"):  # no summary: the cell says why (torchdeq's non-finite loss)
            assert mean == "does not train" and engine == "`torchdeq-ift`", (workload, engine)
            continue
        name = re.search(r"\(exact-gradients/([\w.-]+\.csv)\)", source)[1]
        found = {r["engine"]: r for r in csv.DictReader((RESULTS / "exact-gradients" / name).open())
                 if r["workload"] == workload}  # fmt: skip
        row = found[engine.strip("`")]
        assert _rounded_from(mean, row["mean"], 3) and float(ratio) == float(row["time_vs_first"]), (workload, engine)


def _check_summary_table(runs: list[Path], summary_file: str, section: str, case: dict | None = None) -> None:
    module = from_file(RESULTS.parents[1] / "scripts" / "exact-gradients-summary.py")
    folder = RESULTS / "exact-gradients"
    recomputed = module.summary(runs, case)
    committed = list(csv.DictReader((folder / summary_file).open()))
    assert [r["engine"] for r in committed] == [r["engine"] for r in recomputed]
    for mine, theirs in zip(committed, recomputed, strict=True):
        assert float(mine["mean"]) == theirs["mean"] and float(mine["ms_per_step"]) == theirs["ms_per_step"]
    text = _section(RESULTS / "exact-gradients.md", section)
    rows = {(r[0], r[1].strip("`")): r for r in _table_rows(text) if len(r) == 8 and r[0] in WORKLOADS}
    assert len(rows) == len(committed)
    for row in committed:
        cells = rows[(row["workload"], row["engine"])]
        assert _rounded_from(cells[3], row["mean"], 3) and float(cells[5]) == float(row["ms_per_step"])
        assert cells[4] == f"{float(row['min']):.3f}-{float(row['max']):.3f}"


def test_torchdeqs_state_tracking_stops_are_their_files():
    text = _section(RESULTS / "exact-gradients.md", "### State tracking: three seeds")
    stops, folder = [], RESULTS / "exact-gradients" / "state-tracking-torchdeq"
    for seed in range(3):
        last = (folder / f"seed{seed}.txt").read_text().splitlines()[-1]
        assert "engine 'torchdeq-ift': a non-finite loss (nan) at step " in last
        stops.append(last.split(" at step ")[1].split(";")[0])
    assert f"(steps {stops[0]}, {stops[1]} and {stops[2]} of\n  3000;" in text


def test_the_torchdeq_backward_table_is_its_files():
    folder = RESULTS / "exact-gradients"
    text = _section(RESULTS / "exact-gradients.md", "### What torchdeq's backward solve does")
    rows = [r for r in _table_rows(text) if len(r) == 5 and r[0].isdigit()]
    assert [r[0] for r in rows] == ["0", "1", "2"]
    for seed, *cells in rows:
        probes = [folder / "chains-torchdeq-backward" / f"seed{seed}{tail}.txt" for tail in ("", "-btol0")]
        measured = [ast.literal_eval(p.read_text().splitlines()[-1])["far_end_accuracy"] for p in probes]
        zoo = {
            r["engine"]: float(r["value"])
            for r in csv.DictReader((folder / f"chains-levers-seed{seed}" / "zoo.csv").open())
        }
        measured += [zoo["ift"], zoo["ift:max_iter=5"]]
        assert cells == [f"{value:.3f}" for value in measured]
        assert round(zoo["torchdeq-ift"], 4) == measured[0]  # the probe trains the zoo's model (printed to 4 places)


def _section(page: Path, heading: str) -> str:
    """The text of a page from ``heading`` to the next heading of its level or above."""
    text = page.read_text().split(heading, 1)[1]
    return re.split(r"\n#{1,3} ", text, maxsplit=1)[0]


def _maze_rows(text: str, cells: int) -> dict[str, list[str]]:
    """The rows of a section's tables of ``cells`` cells whose first cell is a maze size such as ``4 x 4``."""
    return {r[0]: r for r in _table_rows(text) if len(r) == cells and r[0].endswith(" x " + r[0].split(" x ")[0])}


@pytest.mark.parametrize(
    ("heading", "folder"),
    [
        ("### Mazes: trained on 4 x 4 cells", "mazes-default"),
        ("### Mazes with deep supervision: three segments", "mazes-segments-3"),
        ("### Mazes with deep supervision and an 8-step gradient", "mazes-segments-3-phantom-8"),
        ("### Mazes with deep supervision and a 5-step gradient", "mazes-segments-3-phantom-5"),
        ("### More segments: six of 10 iterations", "mazes-segments-6-phantom-5"),
    ],
)
def test_the_mazes_tables_are_their_files(heading, folder):
    rows = _maze_rows(_section(RESULTS / "looped.md", heading), 7)
    measured = list(csv.DictReader((RESULTS / "looped" / folder / "mazes.csv").open()))
    depths = sorted({int(r["max_iter"]) for r in measured})
    assert len(rows) == 3 and len(measured) == 3 * len(depths)
    for row in measured:
        cell = rows[f"{row['cells']} x {row['cells']}"][1 + depths.index(int(row["max_iter"]))]
        assert cell == _budget_cell(row), (row["cells"], row["max_iter"])


def test_the_prefix_sums_engines_table_is_its_files():
    table = _table_rows(_section(RESULTS / "looped.md", "### Prefix sums: the engines"))
    rows = {r[0].strip("`"): r[1:] for r in table if r[0] != "engine"}
    zoo = RESULTS / "exact-gradients" / "reasoning-seed0" / "zoo-cases.csv"
    cases = [r for r in csv.DictReader(zoo.open()) if r["workload"] == "prefix-sums"]
    segments = list(csv.DictReader((RESULTS / "looped" / "prefix-sums-segments-3" / "prefix-sums.csv").open()))
    measured = {engine: [r for r in cases if r["engine"] == engine] for engine in {r["engine"] for r in cases}}
    measured["jfb`, 3 segments of 10"] = segments
    assert set(rows) == set(measured)
    for engine, mine in measured.items():
        by_budget = {int(r["max_iter"]): r for r in mine if r["bits"] == "256"}
        expected = [_budget_cell(by_budget[d]) for d in (120, 240, 480)]
        assert rows[engine] == expected, engine


@pytest.mark.parametrize(
    ("heading", "file"),
    [
        ("### Path independence of a model that does not", "mazes-path-independence.csv"),
        ("### Path independence of the model that extrapolates", "mazes-path-independence-phantom-8.csv"),
    ],
)
def test_the_mazes_path_independence_tables_are_their_files(heading, file):
    aligned = _maze_rows(_section(RESULTS / "looped.md", heading), 8)
    scores = list(csv.DictReader((RESULTS / "looped" / file).open()))
    assert len(aligned) == 3
    for cells, row in aligned.items():
        mine = [r for r in scores if f"{r['cells']} x {r['cells']}" == cells]
        by_answer = [[float(r["score"]) for r in mine if r["right"] == flag] for flag in ("1", "0")]
        means = [f"{sum(v) / len(v):.4f}" if v else "-" for v in by_answer]
        lowest = f"{min(float(r['score']) for r in mine):.4f}"
        converged = str(sum(int(r["converged"]) for r in mine))
        assert row[1:] == [mine[0]["max_iter"], str(len(mine)), str(len(by_answer[0])), *means, lowest, converged]


def test_the_sudoku_table_is_its_file():
    text = _section(RESULTS / "looped.md", "### Sudoku: trained at 34 givens")
    rows = {r[0]: r for r in _table_rows(text) if len(r) == 6 and r[0].isdigit()}
    measured = list(csv.DictReader((RESULTS / "looped" / "sudoku-default" / "sudoku.csv").open()))
    depths = sorted({int(r["max_iter"]) for r in measured})
    assert len(rows) == 3 and len(measured) == 3 * len(depths)
    for row in measured:
        cell = rows[row["givens"]][1 + depths.index(int(row["max_iter"]))]
        expected = _budget_cell(row)
        assert cell == expected, (row["givens"], row["max_iter"])


def test_the_halting_table_is_its_file_and_its_savings_follow_from_it():
    text = _section(RESULTS / "looped.md", "### Halting: a learned head")
    rows = {r[0]: r for r in _table_rows(text) if len(r) == 7 and r[0].startswith("halting, threshold")}
    measured = list(csv.DictReader((RESULTS / "looped" / "mazes-halting" / "halting.csv").open()))
    fixed = [r for r in measured if r["policy"] == "fixed"]
    halted = [r for r in measured if r["policy"].startswith("halting")]
    assert len(rows) == len(halted) == 3 and len(fixed) == 48
    for row in halted:
        cells = rows[f"halting, threshold {row['policy'].split()[1]}"]
        accuracy, mean = float(row["accuracy"]), float(row["mean_segments"])
        assert cells[1] == f"{accuracy:.4f} ({mean:.2f})"
        sizes = [part.split(":")[1].split("/") for part in row["per_size"].split()]
        assert cells[2:5] == [f"{a} ({s})" for a, s in sizes]
        as_good = next(int(r["segments"]) for r in fixed if float(r["accuracy"]) >= accuracy)
        assert cells[5] == str(as_good) and cells[6] == f"{1 - mean / as_good:.0%}"


def _looped_zoo_table(section: str, folder: str, columns: int) -> tuple[dict, list[dict], list[dict]]:
    """A looped-page table of a zoo run: its rows by engine, the run's cases and engines; every engine's last four
    cells (ms per step, ratio, saved memory, backward misses) checked against ``zoo.csv``."""
    text = _section(RESULTS / "looped.md", section)
    rows = {r[0].strip("`"): r for r in _table_rows(text) if len(r) == columns and r[0].startswith("`")}
    cases = list(csv.DictReader((RESULTS / "looped" / folder / "zoo-cases.csv").open()))
    engines = list(csv.DictReader((RESULTS / "looped" / folder / "zoo.csv").open()))
    assert len(rows) == len(engines) == 5
    for engine in engines:
        expected = [engine[k] for k in ("ms_per_step", "time_vs_first", "saved_mib", "backward_misses")]
        assert rows[engine["engine"]][-4:] == expected
    return rows, cases, engines


def test_the_sudoku_engines_table_is_its_files():
    rows, cases, engines = _looped_zoo_table("### Sudoku: the engines side by side", "sudoku-zoo", 8)
    for engine in engines:
        cells = rows[engine["engine"]]
        for column, givens in enumerate(("34", "30", "26"), 1):
            key = (engine["engine"], givens, "256")
            (case,) = [c for c in cases if (c["engine"], c["givens"], c["max_iter"]) == key]
            assert cells[column] == f"{float(case['accuracy']):.3f} ({float(case['iterations']):.0f})"


def test_the_mazes_engines_table_is_its_files():
    section = "### Mazes: the engines side by side, with deep supervision"
    rows, cases, engines = _looped_zoo_table(section, "mazes-zoo", 9)
    assert (RESULTS / "looped" / "mazes-zoo" / "zoo-mazes.png").is_file()
    for engine in engines:
        cells, mine = rows[engine["engine"]], [c for c in cases if c["engine"] == engine["engine"]]
        for column, size in enumerate(("4", "8", "12"), 1):
            (case,) = [c for c in mine if (c["cells"], c["max_iter"]) == (size, "960")]
            assert cells[column] == f"{float(case['accuracy']):.2f} ({float(case['iterations']):.0f})"
        best = max((c for c in mine if c["cells"] == "12"), key=lambda c: (float(c["accuracy"]), -int(c["max_iter"])))
        assert cells[4] == f"{float(best['accuracy']):.2f} ({best['max_iter']})"


def test_the_language_model_levers_table_is_its_run():
    text = _section(RESULTS / "exact-gradients.md", "### The levers on the language model, seed 0")
    rows = {r[0].strip("`"): r for r in _table_rows(text) if len(r) == 5 and r[0].startswith("`")}
    measured = list(csv.DictReader((RESULTS / "exact-gradients" / "lm-levers-seed0" / "zoo.csv").open()))
    assert len(rows) == len(measured) == 6
    for row in measured:
        expected = [f"{float(row['value']):.3f}", row["ms_per_step"], row["time_vs_first"], row["backward_misses"]]
        assert rows[row["engine"]][1:] == expected


def test_the_sudoku_deep_supervision_numbers_are_its_file():
    text = _section(RESULTS / "looped.md", "### Sudoku: the engines side by side")
    measured = list(csv.DictReader((RESULTS / "looped" / "sudoku-jfb-segments-4" / "sudoku.csv").open()))
    at_256 = [f"{float(r['accuracy']):.2f}" for r in measured if r["max_iter"] == "256"]
    assert at_256 == ["0.18", "0.00", "0.00"]
    assert "0.18 of the 34-given boards at 256 iterations,\n  0 at 30 and 26 givens" in text


def test_the_gradient_quality_section_is_its_file():
    text = _section(RESULTS / "exact-gradients.md", "### With the Jacobian at `T(u*)`, and the truncated solve")
    levers = (RESULTS / "exact-gradients/levers-lm-output.csv").open()
    rows = {(r["step"], r["lever"]): r for r in csv.DictReader(levers)}
    cosine = {key: float(r["cos_linear_solution"]) for key, r in rows.items()}
    assert f"0.992, JFB {cosine['200', 'jfb']:.2f}" in text and f"{cosine['200', 'ift:max_iter=5']:.3f}" == "0.992"
    assert f"references part ({cosine['300', 'references']:.3f})" in text
    assert "0.63 JFB" in text and round(cosine["300", "jfb"], 2) == 0.63
    assert round(cosine["300", "ift:gmres:max_iter=40"], 2) == 0.87
    assert round(cosine["300", "ift:anderson:max_iter=40"], 2) == 0.84
    assert float(rows["100", "ift:max_iter=5"]["rel_err_neumann_limit"]) == 0.0212 and "2.1%" in text


def test_the_guides_choice_of_engine_per_workload_is_the_overviews_best():
    """The command-line guide names each workload's best engine and best exact-gradient (`ift...`) engine: the
    overview's best 3-seed mean among torch-jfb's engines (the language model's bits per byte: the lowest)."""
    guide = _section(RESULTS.parent / "guide" / "command-line.md", "### Which gradient to train a workload with")
    means: dict[str, dict[str, float]] = {}
    for workload, engine, mean, *_ in _overview_rows():
        if not engine.startswith("`torchdeq") and mean != "does not train":
            means.setdefault(workload, {})[engine.strip("`")] = float(mean) * (-1 if workload == "lm" else 1)
    rows = [r for r in _table_rows(guide) if len(r) == 3 and r[0] in WORKLOADS]
    assert {r[0] for r in rows} == set(WORKLOADS)
    for workload, best, best_exact in rows:
        scores, named = means[workload], [re.match(r"`([^`]+)`", cell) for cell in (best, best_exact)]
        exact = {e: s for e, s in scores.items() if e.startswith("ift")}
        if "all alike" in best:
            assert len(set(scores.values())) == 1 and best_exact == "all alike", workload
            continue
        if "one seed" not in best:  # phantom:8 on mazes: measured on one seed only, on the looped page
            assert scores[named[0][1]] == max(scores.values()), (workload, best)
        assert exact[named[1][1]] == max(exact.values()), (workload, best_exact)
