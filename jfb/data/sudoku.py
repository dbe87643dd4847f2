"""Sudoku 9 x 9: seeded puzzles with a unique solution at a chosen number of givens, and the symmetries that keep one.

A board is 81 cells in row-major order, digits 1-9, 0 for an empty cell. A solution grid is a base Latin-square
pattern put through random symmetries (digit relabelling, row and column swaps within bands and stacks, band and
stack swaps, transposition): every grid this gives is valid, though not uniformly drawn from all 6.7e21 grids. A
puzzle is dug from its grid: cells in random order are emptied while the puzzle keeps exactly one solution
(:func:`count_solutions` stops at two), until ``givens`` are left; a grid that cannot be dug that far is replaced by
the next (no puzzle with a unique solution has fewer than 17 givens, McGuire et al. 2012).

The same symmetries applied to a puzzle and its solution give another valid puzzle with a unique solution
(:func:`augment`): a pool of dug puzzles becomes an unbounded training stream at no search cost.

:func:`read_sudoku_csv` reads published sets of ``puzzle,solution`` lines (recurrent relational networks'
``sudoku-hard`` ``train.csv`` and ``test.csv``, 17-34 givens; Kaggle's one million puzzles), each line checked.
"""

from __future__ import annotations

import random
from pathlib import Path

import torch
from torch import Tensor

from ..errors import JfbError

ROW = [i // 9 for i in range(81)]
COL = [i % 9 for i in range(81)]
BOX = [(i // 27) * 3 + (i % 9) // 3 for i in range(81)]
FULL = 0x1FF  # a bit per digit


def _unit_masks(board: list[int]) -> tuple[list[int], list[int], list[int]] | None:
    """Per row, column and box, the digits placed (bit ``d - 1``); None if a digit repeats in a unit."""
    rows, cols, boxes = [0] * 9, [0] * 9, [0] * 9
    for i, digit in enumerate(board):
        if digit:
            bit = 1 << (digit - 1)
            if (rows[ROW[i]] | cols[COL[i]] | boxes[BOX[i]]) & bit:
                return None
            rows[ROW[i]] |= bit
            cols[COL[i]] |= bit
            boxes[BOX[i]] |= bit
    return rows, cols, boxes


def count_solutions(board: list[int], limit: int = 2) -> int:
    """The number of solutions of ``board`` (81 digits, 0 empty), counted up to ``limit``: depth-first search that
    fills the empty cell with the fewest candidates first."""
    if len(board) != 81 or any(not 0 <= d <= 9 for d in board):
        raise JfbError("count_solutions: a board is 81 digits in 0-9 (0: empty)")
    masks = _unit_masks(board)
    if masks is None:
        return 0
    return _search(list(board), *masks, limit)


def _search(board: list[int], rows: list[int], cols: list[int], boxes: list[int], limit: int) -> int:
    best, best_free, fewest = -1, 0, 10
    for i in range(81):
        if board[i] == 0:
            free = FULL & ~(rows[ROW[i]] | cols[COL[i]] | boxes[BOX[i]])
            count = free.bit_count()
            if count < fewest:
                best, best_free, fewest = i, free, count
                if count <= 1:
                    break
    if best < 0:
        return 1
    found, r, c, b = 0, ROW[best], COL[best], BOX[best]
    while best_free and found < limit:
        bit = best_free & -best_free
        best_free ^= bit
        board[best] = bit.bit_length()
        rows[r] |= bit
        cols[c] |= bit
        boxes[b] |= bit
        found += _search(board, rows, cols, boxes, limit - found)
        rows[r] ^= bit
        cols[c] ^= bit
        boxes[b] ^= bit
    board[best] = 0
    return found


def _permutation_of_groups(rng: random.Random) -> list[int]:
    """0-8 shuffled within each group of three, and the groups shuffled: the order of rows (or columns)."""
    groups = rng.sample(range(3), 3)
    return [3 * g + i for g in groups for i in rng.sample(range(3), 3)]


def solution_grid(rng: random.Random) -> list[int]:
    """A valid grid: the base pattern ``(3r + r // 3 + c) % 9 + 1`` under random symmetries."""
    rows, cols, digits = _permutation_of_groups(rng), _permutation_of_groups(rng), rng.sample(range(1, 10), 9)
    grid = [digits[(3 * r + r // 3 + c) % 9] for r in rows for c in cols]
    return [grid[9 * c + r] for r in range(9) for c in range(9)] if rng.random() < 0.5 else grid


def dig(solution: list[int], givens: int, rng: random.Random) -> list[int] | None:
    """A puzzle of ``solution`` with ``givens`` cells left and one solution, or None if digging stops short."""
    board = list(solution)
    left = 81
    for i in rng.sample(range(81), 81):
        if left == givens:
            return board
        board[i] = 0
        if count_solutions(board) == 1:
            left -= 1
        else:
            board[i] = solution[i]
    return board if left == givens else None


def sudoku_puzzles(count: int, givens: int, seed: int) -> tuple[Tensor, Tensor]:
    """``count`` puzzles with ``givens`` givens and a unique solution: ``(count, 81)`` boards (0 empty) and
    solutions, int64."""
    if not 17 <= givens <= 80:
        raise JfbError(f"sudoku: givens must be in 17-80, got {givens}")
    rng, puzzles, solutions = random.Random(seed), [], []
    while len(puzzles) < count:
        solution = solution_grid(rng)
        for _ in range(20):  # other digging orders of the same grid before the next grid
            board = dig(solution, givens, rng)
            if board is not None:
                puzzles.append(board)
                solutions.append(solution)
                break
    return torch.tensor(puzzles), torch.tensor(solutions)


def augment(puzzles: Tensor, solutions: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """The same random symmetry per pair (relabelled digits, rows and columns permuted within and across bands and
    stacks, transposed or not): each puzzle stays one with a unique solution, its solution's image."""
    b = puzzles.shape[0]
    relabel = torch.cat(
        [torch.zeros(b, 1, dtype=torch.long), torch.argsort(torch.rand(b, 9, generator=generator)) + 1], 1
    )
    order = [_grouped_orders(b, generator) for _ in range(2)]

    def transform(boards: Tensor) -> Tensor:
        boards = torch.gather(relabel, 1, boards).view(b, 9, 9)
        boards = torch.gather(boards, 1, order[0].unsqueeze(2).expand(b, 9, 9))
        boards = torch.gather(boards, 2, order[1].unsqueeze(1).expand(b, 9, 9))
        flip = (torch.rand(b, generator=generator) < 0.5).view(b, 1, 1)
        return torch.where(flip, boards.transpose(1, 2), boards).reshape(b, 81)

    state = generator.get_state()
    out = transform(puzzles)
    generator.set_state(state)  # the solutions take the very same flips
    return out, transform(solutions)


def _grouped_orders(b: int, generator: torch.Generator) -> Tensor:
    """``(b, 9)`` orders of rows (or columns): within each band shuffled, then the bands shuffled."""
    within = torch.argsort(torch.rand(b, 3, 3, generator=generator), 2)
    bands = torch.argsort(torch.rand(b, 3, generator=generator), 1)
    return (3 * bands.unsqueeze(2) + torch.gather(within, 1, bands.unsqueeze(2).expand(b, 3, 3))).reshape(b, 9)


def read_sudoku_csv(path: Path) -> tuple[Tensor, Tensor]:
    """Puzzles and solutions ``(N, 81)`` from lines ``puzzle,solution`` of 81 characters each (``0`` or ``.``: empty),
    a header line allowed; checked: every solution is a valid grid and every puzzle's givens are its digits."""
    if not path.is_file():
        raise JfbError(f"{path}: no such file (a CSV of puzzle,solution lines, e.g. RRN's sudoku-hard/train.csv)")
    puzzles, solutions, numbers = [], [], []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        fields = line.strip().replace(".", "0").split(",")
        if number == 1 and not fields[0].isdigit():
            continue  # a header
        if len(fields) != 2 or not all(len(f) == 81 and f.isdigit() for f in fields):
            raise JfbError(f"{path}:{number}: expected two fields of 81 digits (puzzle,solution), got {line[:40]!r}")
        puzzles.append([int(c) for c in fields[0]])
        solutions.append([int(c) for c in fields[1]])
        numbers.append(number)
    if not puzzles:
        raise JfbError(f"{path}: no puzzles")
    puzzles, solutions = torch.tensor(puzzles), torch.tensor(solutions)
    bad = (~_valid_grids(solutions)) | ((puzzles != 0) & (puzzles != solutions)).any(1)
    if bad.any():
        raise JfbError(f"{path}:{numbers[int(bad.nonzero()[0])]}: the solution is not a valid grid or the "
                       "puzzle's givens are not its digits")  # fmt: skip
    return puzzles, solutions


def _valid_grids(solutions: Tensor) -> Tensor:
    """``(N,)``: every row, column and box of each grid holds each of the digits 1-9 once."""
    valid = ((solutions >= 1) & (solutions <= 9)).all(1)
    one_hot = torch.nn.functional.one_hot((solutions - 1).clamp(0, 8), 9)  # (N, 81, 9)
    for unit in (ROW, COL, BOX):
        counts = torch.zeros(len(solutions), 9, 9, dtype=torch.long).index_add_(1, torch.tensor(unit), one_hot)
        valid &= (counts == 1).all(2).all(1)
    return valid
