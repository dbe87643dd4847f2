"""torch.func transforms through the solve (vmap, jacrev, jacfwd, jvp, hessian), against dense linear algebra.

The problem: ``u = tanh(W u + U x + b)`` in float64 with ``||W|| = 0.5``. At the fixed point ``t = u*``,
``D = diag(1 - t^2)``, ``J = D W``: the implicit Jacobian is ``G = (I - J)^{-1} D U``, JFB's one-step Jacobian is
``D U``, Neumann-k's ``sum_{i<=k} J^i D U``. Differentiating ``G = D (W G + U)`` once more gives the second
derivative ``d2u/dx_j dx_k = (I - J)^{-1} (-2 t * G[:, k] * A[:, j])`` with ``A = W G + U``.
"""

from __future__ import annotations

import pytest
import torch
from torch.func import functional_call, grad, hessian, jacfwd, jacrev, jvp, vmap

import jfb
from jfb.errors import JfbError

D_STATE, D_INPUT = 5, 3
TOL = 1e-12


pytestmark = pytest.mark.usefixtures("float64_default")


def problem(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(D_STATE, D_STATE, generator=g)
    W = 0.5 * W / torch.linalg.matrix_norm(W, ord=2)
    U = torch.randn(D_STATE, D_INPUT, generator=g)
    b = 0.1 * torch.randn(D_STATE, generator=g)
    x = torch.randn(D_INPUT, generator=g)

    def T(u, x):
        return torch.tanh(u @ W.T + x @ U.T + b)

    return T, W, U, x


def dense(T, W, U, x):
    """u*, J, the implicit Jacobian G = du*/dx and A = W G + U, by dense linear algebra."""
    u = torch.zeros(D_STATE)
    for _ in range(200):
        u = T(u, x)
    D = torch.diag(1 - u**2)
    J = D @ W
    G = torch.linalg.solve(torch.eye(D_STATE) - J, D @ U)
    return u, J, G, W @ G + U


def solve_one(T, backward, **settings):
    solver = "picard"
    settings = {"tol": TOL, "max_iter": 300, **settings}

    def f(x):
        return jfb.fixed_point(T, x[None], backward=backward, solver=solver, latent_shape=(D_STATE,), **settings).value[
            0
        ]

    return f


def rel(a, b):
    return float((a - b).norm() / b.norm())


def expected_jacobian(backward, J, G, U, u):
    D = torch.diag(1 - u**2)
    if backward.startswith("ift") or backward == "unroll":
        return G
    k = {"jfb": 0, "neumann:3": 3, "phantom:3": 2}[backward]
    return sum(torch.linalg.matrix_power(J, i) for i in range(k + 1)) @ D @ U


MODES = ["jfb", "ift:tol=1e-13", "ift:cg:tol=1e-13", "ift:gmres:tol=1e-13", "unroll", "neumann:3", "phantom:3"]


@pytest.mark.parametrize("backward", MODES)
def test_jacrev_and_jacfwd_match_the_closed_form(backward):
    T, W, U, x = problem()
    u, J, G, _ = dense(T, W, U, x)
    want = expected_jacobian(backward, J, G, U, u)
    f = solve_one(T, backward)
    assert rel(jacrev(f)(x), want) < 1e-8
    assert rel(jacfwd(f)(x), want) < 1e-8


@pytest.mark.parametrize("backward", ["jfb", "ift:tol=1e-13", "unroll", "neumann:3"])
def test_jvp_gives_the_implicit_tangent(backward):
    T, W, U, x = problem(1)
    u, J, G, _ = dense(T, W, U, x)
    v = torch.randn(D_INPUT, generator=torch.Generator().manual_seed(5))
    value, tangent = jvp(solve_one(T, backward), (x,), (v,))
    assert rel(value, u) < 1e-10
    assert rel(tangent, expected_jacobian(backward, J, G, U, u) @ v) < 1e-8


@pytest.mark.parametrize("backward", ["jfb", "ift:tol=1e-13", "unroll"])
def test_vmap_over_problems_and_per_problem_jacobians(backward):
    T, W, U, _ = problem(2)
    xs = torch.randn(6, D_INPUT, generator=torch.Generator().manual_seed(3))
    f = solve_one(T, backward)
    values, jacobians = vmap(f)(xs), vmap(jacrev(f))(xs)
    for x, value, jacobian in zip(xs, values, jacobians):
        u, J, G, _ = dense(T, W, U, x)
        assert rel(value, u) < 1e-10
        assert rel(jacobian, expected_jacobian(backward, J, G, U, u)) < 1e-8


def test_vmap_of_a_batched_layer_folds_the_vmapped_problems_into_its_batch():
    T, W, U, _ = problem(3)
    xs = torch.randn(4, 2, D_INPUT, generator=torch.Generator().manual_seed(4))  # 4 vmapped batches of 2
    layer = jfb.ImplicitLayer(T, backward="ift", solver="anderson", tol=TOL, max_iter=200, latent_shape=(D_STATE,))
    out = vmap(layer)(xs)
    assert out.shape == (4, 2, D_STATE)
    assert layer.last_stats.iterations.shape == (8,)  # every vmapped problem's own count
    for x, value in zip(xs.reshape(-1, D_INPUT), out.reshape(-1, D_STATE)):
        assert rel(value, dense(T, W, U, x)[0]) < 1e-10


def test_forward_mode_over_a_vmap_inside_it():  # functorch once lost the tangent rule's saved tensors here
    T, W, U, _ = problem(2)
    xs = torch.randn(3, D_INPUT, generator=torch.Generator().manual_seed(3))
    v = torch.randn(3, D_INPUT, generator=torch.Generator().manual_seed(4))
    f = solve_one(T, "ift:tol=1e-13")
    _, tangents = jvp(vmap(f), (xs,), (v,))
    jacobians = jacfwd(vmap(f))(xs)  # (problem, state, problem, input)
    for i, x in enumerate(xs):
        G = dense(T, W, U, x)[2]
        assert rel(tangents[i], G @ v[i]) < 1e-8
        assert rel(jacobians[i, :, i], G) < 1e-8


HESSIAN_MODES = ["ift:tol=1e-13", "ift:gmres:tol=1e-13", "ift:cg:tol=1e-13", "unroll"]


@pytest.mark.parametrize("backward", HESSIAN_MODES)
def test_hessian_matches_the_second_derivative_of_the_fixed_point(backward):
    T, W, U, x = problem(4)
    u, J, G, A = dense(T, W, U, x)
    second = torch.stack(
        [
            torch.stack(
                [torch.linalg.solve(torch.eye(D_STATE) - J, -2 * u * G[:, k] * A[:, j]) for k in range(D_INPUT)], -1
            )
            for j in range(D_INPUT)
        ],
        -2,
    )  # (state, j, k)
    want = second.sum(0)
    f = solve_one(T, backward)
    assert rel(hessian(lambda x: f(x).sum())(x), want) < 1e-8
    assert rel(torch.autograd.functional.hessian(lambda x: f(x).sum(), x), want) < 1e-8


def test_vmap_of_hessians_through_ift():
    T, W, U, _ = problem(6)
    xs = torch.randn(3, D_INPUT, generator=torch.Generator().manual_seed(7))
    f = solve_one(T, "ift:tol=1e-13")
    for x, got in zip(xs, vmap(hessian(lambda x: f(x).sum()))(xs)):
        u, J, G, A = dense(T, W, U, x)
        r = torch.linalg.solve((torch.eye(D_STATE) - J).T, torch.ones(D_STATE))  # 1^T (I - J)^{-1} = r^T
        assert rel(got, torch.einsum("s,sj,sk->jk", -2 * u * r, A, G)) < 1e-8


@pytest.mark.parametrize("backward", ["ift:tol=1e-13", "unroll"])
def test_hessian_with_respect_to_the_parameters_matches_torch_autograd(backward):
    """The mixed terms through the parameters (their tangents reach J and T's partials); torch.autograd's second
    derivative through ift is itself checked against a dense Hessian (tests/test_second_order.py)."""
    torch.manual_seed(0)
    layer = jfb.ImplicitLayer(Affine(), backward=backward, solver="picard", tol=TOL, max_iter=300)
    params = {k: v.detach() for k, v in layer.named_parameters()}
    x = torch.randn(2, D_STATE, generator=torch.Generator().manual_seed(1))
    sizes = [p.numel() for p in params.values()]

    def loss(p):
        return functional_call(layer, p, (x,)).square().sum()

    def loss_of_flat(flat):
        return loss({k: part.reshape(v.shape) for (k, v), part in zip(params.items(), flat.split(sizes))})

    got = hessian(loss)(params)
    got = torch.cat([torch.cat([got[a][b].reshape(params[a].numel(), -1) for b in params], 1) for a in params])
    want = torch.autograd.functional.hessian(loss_of_flat, torch.cat([v.reshape(-1) for v in params.values()]))
    assert rel(got.detach(), want) < 1e-9


def test_jfb_hessian_is_the_one_step_one():
    T, W, U, x = problem(5)
    u = dense(T, W, U, x)[0]
    want = torch.einsum("i,ij,ik->jk", -2 * u * (1 - u**2), U, U)
    assert rel(hessian(lambda x: solve_one(T, "jfb")(x).sum())(x), want) < 1e-8


def test_per_sample_gradients_of_a_deq_layer_match_a_loop():
    torch.manual_seed(0)
    operator = Affine()
    layer = jfb.ImplicitLayer(operator, backward="ift:tol=1e-13", solver="picard", tol=TOL, max_iter=300)
    params = {k: v.detach() for k, v in layer.named_parameters()}
    xs, ys = torch.randn(5, D_STATE), torch.randn(5, D_STATE)

    def loss(params, x, y):
        return (functional_call(layer, params, (x[None],))[0] - y).square().sum()

    per_sample = vmap(grad(loss), in_dims=(None, 0, 0))(params, xs, ys)
    for i in range(5):
        layer.zero_grad()
        (layer(xs[i : i + 1]) - ys[i : i + 1]).square().sum().backward()
        for name, p in layer.named_parameters():
            assert rel(per_sample[name][i], p.grad) < 1e-9


class Affine(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.W = torch.nn.Parameter(0.4 * torch.linalg.qr(torch.randn(D_STATE, D_STATE))[0])
        self.b = torch.nn.Parameter(torch.randn(D_STATE))

    def forward(self, u, x):
        return torch.tanh(u @ self.W.T + x + self.b)


@pytest.mark.parametrize(
    ("backward", "transform", "says"),
    [
        ("auto", vmap, "does not run under torch.func vmap; use one of jfb"),
        ("reversible", jacrev, "does not run under torch.func grad"),
        ("ift", lambda f: jacrev(jacrev(f)), "only torch.func.hessian"),
        ("ift", lambda f: jacfwd(jacfwd(f)), "only torch.func.hessian"),
        ("neumann:3", hessian, "second derivatives"),
    ],
)
def test_modes_that_cannot_give_a_transform_refuse_it(backward, transform, says):
    T, *_, x = problem()
    solver = "reversible" if backward == "reversible" else "picard"

    def f(x):
        eq = jfb.fixed_point(T, x[None], backward=backward, solver=solver, tol=1e-10, latent_shape=(D_STATE,))
        return eq.value[0].sum()

    with pytest.raises(JfbError, match=says):
        transform(f)(x[None].expand(2, -1) if transform is vmap else x)


def test_regularisers_inside_a_transform_are_refused():
    T, *_, x = problem()
    with pytest.raises(JfbError, match=r"do not run inside torch\.func"):
        jacrev(lambda x: jfb.fixed_point(T, x[None], jacobian_probes=1, latent_shape=(D_STATE,)).value.sum())(x)


@pytest.mark.parametrize("backward", ["ift:tol=1e-13", "neumann:3", "ift:cg:tol=1e-13"])
def test_the_backward_pass_applies_t_with_the_parameters_of_the_forward_call(backward):
    """torch.func.functional_call swaps a module's parameters for the call only; IFT's and Neumann's backward
    passes apply T again after it returned, and must use the swapped-in tensors, not the module's own."""
    layer = jfb.ImplicitLayer(Affine(), backward=backward, solver="picard", tol=TOL, max_iter=300)
    other = {name: (p.detach() + 0.1 * torch.randn_like(p)).requires_grad_() for name, p in layer.named_parameters()}
    x = torch.randn(3, D_STATE)
    out = functional_call(layer, other, (x,))
    got = torch.autograd.grad(out.square().sum(), list(other.values()))
    twin = jfb.ImplicitLayer(Affine(), backward=backward, solver="picard", tol=TOL, max_iter=300)
    twin.load_state_dict({name: t.detach() for name, t in other.items()})
    want = torch.autograd.grad(twin(x).square().sum(), list(twin.parameters()))
    for g, w in zip(got, want, strict=True):
        assert rel(g, w) < 1e-10


def test_vmap_over_stacked_parameters_gives_each_models_own_gradient():
    """An ensemble: torch.func.stack_module_state + vmap(grad(functional_call)) against each model's autograd."""
    torch.manual_seed(1)
    layers = [jfb.ImplicitLayer(Affine(), backward="ift:tol=1e-13", solver="anderson", tol=TOL) for _ in range(3)]
    params, buffers = torch.func.stack_module_state(layers)
    x = torch.randn(2, D_STATE)

    def loss(params, buffers):
        return functional_call(layers[0], (params, buffers), (x,)).square().sum()

    gradients = vmap(grad(loss))(params, buffers)
    for i, layer in enumerate(layers):
        layer.zero_grad()
        layer(x).square().sum().backward()
        for name, p in layer.named_parameters():
            assert rel(gradients[name][i], p.grad) < 1e-10
