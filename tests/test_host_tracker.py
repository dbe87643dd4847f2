"""The host tracker (small CPU batches) against the device tracker: the same decisions and statistics.

Every case solves twice, once with the driver's choice (the host tracker, for these batches) and once with the
device tracker forced, and compares everything a solve reports.
"""

from __future__ import annotations

import warnings

import pytest
import torch

import jfb
from jfb.solvers import driver
from jfb.solvers.host_tracker import HOST_BATCH, HostTracker


def _tanh(scale: float, dim: int = 6, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    W = torch.randn(dim, dim, generator=generator, dtype=torch.float64)
    W = scale * W / torch.linalg.matrix_norm(W, ord=2)
    return lambda u, x: torch.tanh(u @ W.T.to(u.dtype) + x)


def _expanding(u, x):  # the residual grows 3x per step: divergence
    return 3 * u + x


def _nan_at_step(k: int):
    calls = {"n": 0}

    def T(u, x):
        calls["n"] += 1
        out = 0.5 * u + x
        return out * torch.nan if calls["n"] >= k else out

    return T


def _mixed(u, x):  # row i contracts by x[i, 0]: samples converge at different steps
    return x[:, :1] * u + x[:, 1:]


def _solve(T, x, device: bool, monkeypatch, **settings):
    with monkeypatch.context() as patch:
        if device:
            patch.setattr(driver, "host_trackable", lambda *args: False)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            eq = jfb.fixed_point(T, x, on_failure="ignore", **settings)
    return eq


CASES = {
    "converges": (lambda: _tanh(0.7), lambda d: torch.randn(3, 6, dtype=d), {}),
    "max_iter": (lambda: _tanh(0.95), lambda d: torch.randn(2, 6, dtype=d), {"max_iter": 6}),
    "diverges": (lambda: _expanding, lambda d: torch.ones(2, 6, dtype=d), {}),
    "nan": (lambda: _nan_at_step(5), lambda d: torch.ones(1, 6, dtype=d), {}),
    "mixed": (
        lambda: _mixed,
        lambda d: torch.cat([torch.tensor([[0.1], [0.6], [0.9], [0.3]], dtype=d), torch.ones(4, 3, dtype=d)], 1),
        {"u0": torch.zeros(4, 3), "max_iter": 200},
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("solver", ["picard", "anderson"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("freeze", [False, True, "fixed depth"])
def test_host_and_device_trackers_report_the_same_solve(case, solver, dtype, freeze, monkeypatch):
    make_T, make_x, extra = CASES[case]
    torch.manual_seed(0)
    x = make_x(dtype)
    extra = {k: v.to(dtype) if isinstance(v, torch.Tensor) else v for k, v in extra.items()}
    settings = dict(solver=solver, tol=1e-6, max_iter=60, freeze_converged=freeze is True) | extra
    if freeze == "fixed depth":
        settings |= dict(tol=None, max_iter=min(settings["max_iter"], 12))
    host, device = (_solve(make_T(), x, flag, monkeypatch, **settings) for flag in (False, True))
    assert host.stats.status == device.stats.status != "", case
    assert host.stats.t_evals == device.stats.t_evals
    assert torch.equal(host.stats.iterations, device.stats.iterations)
    assert torch.equal(host.stats.converged, device.stats.converged)
    close = dict(rtol=1e-5, atol=0, equal_nan=True)
    assert torch.allclose(host.stats.abs_residual, device.stats.abs_residual.to(host.stats.abs_residual.dtype), **close)
    assert torch.allclose(host.stats.rel_residual, device.stats.rel_residual.to(host.stats.rel_residual.dtype), **close)
    assert host.stats.abs_residual.dtype == device.stats.abs_residual.dtype
    assert torch.equal(host.value, device.value) or torch.allclose(host.value, device.value, equal_nan=True)


def test_the_statuses_the_cases_reach_are_the_ones_they_test(monkeypatch):
    """The cases above exercise every outcome (so agreeing on them means something)."""
    statuses = {}
    for case, (make_T, make_x, extra) in CASES.items():
        settings = dict(solver="picard", tol=1e-6, max_iter=60) | extra
        statuses[case] = str(_solve(make_T(), make_x(torch.float64), False, monkeypatch, **settings).stats.status)
    assert statuses == {
        "converges": "converged",
        "max_iter": "max_iter",
        "diverges": "diverged",
        "nan": "non_finite",
        "mixed": "converged",
    }


def _tracker_kind(monkeypatch, x, **settings) -> str:
    kinds = []
    original = HostTracker.__init__

    def spy(self, *args, **kwargs):
        kinds.append("host")
        original(self, *args, **kwargs)

    monkeypatch.setattr(HostTracker, "__init__", spy)
    with torch.no_grad():
        jfb.fixed_point(lambda u, x: 0.5 * u + x, x, solver="picard", on_failure="ignore", **settings)
    monkeypatch.undo()
    return kinds[0] if kinds else "device"


def test_the_driver_keeps_the_bookkeeping_on_the_host_only_where_a_read_is_free(monkeypatch):
    small, large = torch.ones(HOST_BATCH, 4), torch.ones(HOST_BATCH + 1, 4)
    assert _tracker_kind(monkeypatch, small, tol=1e-6) == "host"
    assert _tracker_kind(monkeypatch, large, tol=1e-6) == "device"
    assert _tracker_kind(monkeypatch, small, tol=1e-6, stop_mode="rel") == "device"
    assert _tracker_kind(monkeypatch, small, tol=1e-6, check_every=2) == "device"
    assert _tracker_kind(monkeypatch, small, tol=1e-6, keep_history=True) == "device"
    assert _tracker_kind(monkeypatch, small, tol=None, max_iter=5, stop_mode="rel") == "host"  # (nothing to check)
    assert _tracker_kind(monkeypatch, large, tol=None, max_iter=5) == "device"
