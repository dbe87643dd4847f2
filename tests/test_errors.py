"""Bad arguments raise ValueError naming the bad value and the allowed ones."""

from __future__ import annotations

import pytest
import torch

import jfb

OP = lambda u, x: 0.5 * u + x  # noqa: E731


@pytest.mark.parametrize(
    "kwargs, pattern",
    [
        (dict(solver="newton"), r"unknown solver 'newton'; choose one of picard, anderson, broyden"),
        (
            dict(backward="adjoint"),
            r"unknown backward mode 'adjoint'; choose one of jfb, neumann:K, "
            r"ift\[:cg\|fixed_point\|gmres\|anderson\|broyden\]",
        ),
        (dict(backward="neumann:-1"), r"bad backward mode 'neumann:-1': Neumann order k must be an integer >= 0"),
        (
            dict(backward="ift:lsqr"),
            r"bad backward mode 'ift:lsqr': unknown IFT linear solver 'lsqr'; choose one of cg, "
            r"fixed_point\[:fallback=gmres\|none\]\[:per_sample=1\], gmres",
        ),
        (dict(tol=0), r'tol must be a number > 0, or None \("none" in TOML and flags\) for a fixed depth, got 0'),
        (
            dict(tol=-1e-3),
            r'tol must be a number > 0, or None \("none" in TOML and flags\) for a fixed depth, got -0.001',
        ),
        (
            dict(tolerance=1e-3),
            r"unknown solve option 'tolerance'; choose one of solver, tol, .* \(did you mean 'tol'\?\)",
        ),
        (
            dict(solver="anderson", solver_options={"m": 3}),
            r"unknown option of solver 'anderson' 'm'; choose one of memory, beta, ridge",
        ),
        (dict(check_every=0), r"check_every must be an integer >= 1, got 0"),
        (dict(max_iter=0), r"max_iter must be an integer >= 1, got 0"),
        (dict(max_iter=2.5), r"max_iter must be an integer >= 1, got 2.5"),
        (dict(stop_mode="max"), r"unknown stop_mode 'max'; choose one of abs, rel"),
        (dict(on_failure="panic"), r"unknown on_failure 'panic'; choose one of warn, raise, ignore"),
        (dict(solver="anderson", backward="unroll"), r"pass solver='picard', not 'anderson'"),
    ],
)
def test_bad_arguments(kwargs, pattern):
    with pytest.raises(jfb.JfbError, match=pattern):
        jfb.ImplicitLayer(OP, **kwargs)


def test_operator_must_be_callable():
    with pytest.raises(ValueError, match=r"operator must be an nn\.Module or a callable"):
        jfb.ImplicitLayer(42)


@pytest.mark.parametrize("solver", ["picard", "anderson", "broyden"])
def test_operator_output_of_a_different_shape(solver):
    layer = jfb.ImplicitLayer(lambda u, x: torch.cat([u, x], dim=1), solver=solver)
    with pytest.raises(jfb.JfbError, match=r"T\(u0\) has shape \(2, 6\) but u0 has \(2, 3\) \(x: \(2, 3\)\)"):
        layer(torch.ones(2, 3))


def test_ift_options_are_checked():
    with pytest.raises(ValueError, match="unknown IFT linear solver 'qr'"):
        jfb.backward.IFT("qr")
    with pytest.raises(ValueError, match="IFT tol must be a number > 0"):
        jfb.backward.IFT(tol=0.0)
    with pytest.raises(ValueError, match="Neumann order k must be an integer >= 0, got -2"):
        jfb.backward.Neumann(-2)
