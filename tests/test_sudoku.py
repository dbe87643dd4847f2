"""The Sudoku workload: generated puzzles with one solution at a chosen number of givens, symmetries that keep one,
a relational block that treats every cell alike, and a model that learns to fill boards."""

from __future__ import annotations

import pytest
import torch

from jfb.data.sudoku import BOX, COL, ROW, augment, count_solutions, read_sudoku_csv, solution_grid, sudoku_puzzles
from jfb.errors import JfbError
from jfb.workloads import get_workload
from jfb.workloads.sudoku import RelationalBlock, unit_sums

#: a published puzzle with a unique solution (the first of Project Euler 96's fifty)
EULER = "003020600900305001001806400008102900700000008006708200002609500800203009005010300"


def _valid(solution: torch.Tensor) -> bool:
    grid = solution.view(9, 9)
    units = [*grid, *grid.T, *(grid[r : r + 3, c : c + 3].flatten() for r in (0, 3, 6) for c in (0, 3, 6))]
    return all(sorted(unit.tolist()) == list(range(1, 10)) for unit in units)


def test_counting_solutions_tells_unique_from_many_and_from_none():
    board = [int(c) for c in EULER]
    assert count_solutions(board) == 1
    assert count_solutions([0] * 81, limit=5) == 5  # the empty board: many, counted up to the limit
    board[2] = board[4]  # 3 beside the 2 in row 0 becomes another 2: a repeated digit
    assert count_solutions(board) == 0
    with pytest.raises(JfbError, match="81 digits"):
        count_solutions([0] * 80)


@pytest.mark.parametrize("givens", [40, 30])
def test_puzzles_have_the_givens_asked_for_and_one_solution_their_grid(givens):
    puzzles, solutions = sudoku_puzzles(12, givens, seed=givens)
    assert puzzles.shape == solutions.shape == (12, 81)
    assert ((puzzles > 0).sum(1) == givens).all()
    assert ((puzzles == 0) | (puzzles == solutions)).all()  # the givens are the solution's digits
    for puzzle, solution in zip(puzzles, solutions, strict=True):
        assert _valid(solution) and count_solutions(puzzle.tolist()) == 1
    again, _ = sudoku_puzzles(12, givens, seed=givens)
    other, _ = sudoku_puzzles(12, givens, seed=givens + 1)
    assert torch.equal(puzzles, again) and not torch.equal(puzzles, other)
    with pytest.raises(JfbError, match="givens"):
        sudoku_puzzles(1, 16, seed=0)


def test_solution_grids_are_valid_and_varied():
    import random

    rng = random.Random(0)
    grids = [torch.tensor(solution_grid(rng)) for _ in range(50)]
    assert all(_valid(g) for g in grids)
    assert len({tuple(g.tolist()) for g in grids}) == 50


def test_symmetries_keep_a_puzzle_unique_and_its_solution_its_own():
    puzzles, solutions = sudoku_puzzles(16, 32, seed=3)
    boards, solved = augment(puzzles, solutions, torch.Generator().manual_seed(0))
    assert not torch.equal(boards, puzzles)
    assert ((boards > 0).sum(1) == 32).all() and ((boards == 0) | (boards == solved)).all()
    for board, solution in zip(boards, solved, strict=True):
        assert _valid(solution) and count_solutions(board.tolist()) == 1
    # a symmetry: the same digit counts, the same number of givens per row up to a reordering of rows or columns
    row_counts = lambda b: sorted((b.view(-1, 9, 9) > 0).sum(2)[0].tolist())  # noqa: E731
    col_counts = lambda b: sorted((b.view(-1, 9, 9) > 0).sum(1)[0].tolist())  # noqa: E731
    before, after = row_counts(puzzles[0]) + col_counts(puzzles[0]), row_counts(boards[0]) + col_counts(boards[0])
    assert sorted(before) == sorted(after)


def test_each_cell_has_eight_mates_in_each_unit_and_twenty_peers():
    sums = unit_sums()
    assert (sums.sum(1) == 8).all() and (sums.diagonal(dim1=1, dim2=2) == 0).all()
    peers = (sums.sum(0) > 0).sum(0)
    assert (peers == 20).all()
    assert bool(sums[0, 1, 0]) and ROW[0] == ROW[1] and not bool(sums[2, 27, 0]) and BOX[27] != BOX[0]
    assert bool(sums[1, 9, 0]) and COL[9] == COL[0]


def test_the_relational_block_commutes_with_the_symmetries_of_the_board():
    """Swapping two rows of a band (and two bands) permutes the cells; the block's output is permuted alike."""
    torch.manual_seed(0)
    block = RelationalBlock(8).double()
    u, e = torch.randn(2, 8, 81, dtype=torch.float64), torch.randn(2, 8, 81, dtype=torch.float64)
    rows = [1, 0, 2, 6, 7, 8, 3, 4, 5]  # rows 0 and 1 swapped, bands 1 and 2 swapped
    order = torch.tensor([9 * r + c for r in rows for c in range(9)])
    assert torch.allclose(block(u[:, :, order], e[:, :, order]), block(u, e)[:, :, order], atol=1e-12)
    cells = torch.randperm(81)  # an arbitrary permutation of cells is not a symmetry: the output differs
    assert not torch.allclose(block(u[:, :, cells], e[:, :, cells]), block(u, e)[:, :, cells], atol=1e-3)


def _csv(path, puzzles, solutions, header=True, dots=False):
    lines = ["quizzes,solutions"] if header else []
    for p, q in zip(puzzles, solutions, strict=True):
        board = "".join(map(str, p.tolist()))
        lines.append(f"{board.replace('0', '.') if dots else board},{''.join(map(str, q.tolist()))}")
    path.write_text("\n".join(lines) + "\n")


def test_published_csv_sets_are_read_and_every_line_checked(tmp_path):
    puzzles, solutions = sudoku_puzzles(5, 36, seed=1)
    _csv(tmp_path / "a.csv", puzzles, solutions)
    _csv(tmp_path / "b.csv", puzzles, solutions, header=False, dots=True)
    for name in ("a.csv", "b.csv"):
        read = read_sudoku_csv(tmp_path / name)
        assert torch.equal(read[0], puzzles) and torch.equal(read[1], solutions)
    broken = solutions.clone()
    broken[3, [0, 1]] = broken[3, [1, 0]]  # two digits of a row swapped: their columns now repeat digits
    _csv(tmp_path / "c.csv", puzzles, broken)
    with pytest.raises(JfbError, match=r"c\.csv:5: the solution is not a valid grid"):
        read_sudoku_csv(tmp_path / "c.csv")
    (tmp_path / "d.csv").write_text("1234,5678\n")
    with pytest.raises(JfbError, match=r"d\.csv:1: expected two fields of 81 digits"):
        read_sudoku_csv(tmp_path / "d.csv")
    with pytest.raises(JfbError, match="no such file"):
        read_sudoku_csv(tmp_path / "nope.csv")


def test_the_workload_trains_and_tests_on_a_published_folder(tmp_path):
    train, test = sudoku_puzzles(20, 40, seed=5), sudoku_puzzles(6, 38, seed=6)
    _csv(tmp_path / "train.csv", *train)
    _csv(tmp_path / "test.csv", *test)
    workload = get_workload("sudoku")
    smoke = {**workload.smoke, "steps": 3, "data": str(tmp_path), "test_givens": (38,), "test_puzzles": 4}
    trained = workload.train(workload.config(**smoke))
    assert 0.0 <= trained.metrics["accuracy_38_givens"] <= 1.0
    assert [r["givens"] for r in trained.rows] == [38, 38]  # one row per budget, four puzzles each
    with pytest.raises(JfbError, match=r"no puzzle with 30 givens \(it has 38\)"):
        workload.evaluate(trained.model, workload.config(**{**smoke, "test_givens": (30,)}))


@pytest.mark.slow  # 300 steps: about 30 s
def test_the_sudoku_model_learns_to_fill_whole_boards():
    workload = get_workload("sudoku")
    trained = workload.train(workload.config(**workload.smoke))
    assert trained.result.final_loss < 0.5  # uniform guessing over the empty cells: ln 9 = 2.2 nats a cell
    assert trained.metrics["accuracy_40_givens"] >= 0.15  # whole boards; measured 0.34 (AVX2 EPYC, seed 0, 1 thread)
