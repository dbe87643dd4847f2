"""One status vocabulary for forward solves, backward linear solves and the layer's statistics."""

from __future__ import annotations

from enum import StrEnum


class Status(StrEnum):
    """Outcome of a solve; a ``str``, so ``state.status == "converged"`` holds.

    Worst first: ``non_finite`` > ``diverged`` > ``max_iter`` > ``fixed_depth`` / ``converged``; the first three
    are failures (``status.failed``), reported through ``on_failure``.
    ``fixed_depth`` means exactly ``max_iter`` evaluations were asked for (``tol=None``) and run;
    ``not_run`` is a backward pass that has not happened yet; ``traced``, a solve traced into a program
    (``torch.export``) that stops at its tolerance when the program runs (its outcome is not known before).
    """

    CONVERGED = "converged"
    FIXED_DEPTH = "fixed_depth"
    MAX_ITER = "max_iter"
    DIVERGED = "diverged"
    NON_FINITE = "non_finite"
    NOT_RUN = "not_run"
    TRACED = "traced"

    @classmethod
    def of_outcome(cls, converged: bool, non_finite: bool, diverged: bool) -> Status:
        """A tracked solve's status from what its bookkeeping saw, the worst first."""
        if non_finite:
            return cls.NON_FINITE
        if diverged:
            return cls.DIVERGED
        return cls.CONVERGED if converged else cls.MAX_ITER

    @property
    def failed(self) -> bool:
        """The solve did not do what it was asked: a tolerance not reached (``max_iter``), diverged or non-finite.

        A fixed depth (``tol=None``) ends at ``max_iter`` by design and has not failed."""
        return self in (Status.MAX_ITER, Status.DIVERGED, Status.NON_FINITE)

    @property
    def no_fixed_point(self) -> bool:
        """Diverged or non-finite: the returned point is no fixed point (a ``max_iter`` point is a loose one)."""
        return self in (Status.DIVERGED, Status.NON_FINITE)
