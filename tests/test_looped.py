"""jfb.looped: multi-start picks each sample's best start; the path-independence score tells one attractor from two."""

from __future__ import annotations

import pytest
import torch

import jfb
from jfb.looped import OTHER_SAMPLE, multi_start, path_independence

F64 = dict(dtype=torch.float64)


def _contraction(dim: int = 8):
    W = torch.randn(dim, dim, generator=torch.Generator().manual_seed(0), **F64)
    W = 0.5 * W / torch.linalg.matrix_norm(W, ord=2)
    return lambda u, x: torch.tanh(u @ W.T + x)


def _two_attractors(u, x):  # per coordinate, stable fixed points near -1 and +1 (slope 3 at 0: repelling)
    return torch.tanh(3 * u + x)


def _x(batch: int = 6, dim: int = 8, scale: float = 1.0) -> torch.Tensor:
    return scale * torch.randn(batch, dim, generator=torch.Generator().manual_seed(1), **F64)


SOLVE = dict(solver="picard", tol=1e-12, max_iter=400)


def test_a_contraction_is_path_independent():
    torch.manual_seed(0)
    result = path_independence(_contraction(), _x(), **SOLVE)
    assert result.alignment.shape == (2, 6) and result.starts == [OTHER_SAMPLE, "random"]
    assert bool(result.converged.all())
    assert float(result.score.min()) > 1 - 1e-12


def test_a_map_with_two_attractors_per_coordinate_is_not():
    torch.manual_seed(0)
    x = _x(batch=32, dim=16, scale=0.1)
    result = path_independence(_two_attractors, x, **SOLVE)
    assert bool(result.converged.all())  # every start reached a fixed point: they differ, the solves did not fail
    assert float(result.score.max()) < 0.9 and float(result.score.mean()) < 0.3
    other = result.alignment[0]  # the paper's start: another sample's fixed point, here of other signs
    assert float(other.mean()) < 0.5


def test_path_independence_of_a_layer_with_a_tuple_state():
    torch.manual_seed(0)
    contraction = _contraction(4)

    class Pair(torch.nn.Module):
        def forward(self, u, x):
            a, b = u
            return contraction(a, x), 0.5 * b + x.sum(1, keepdim=True)

    layer = jfb.ImplicitLayer(Pair(), latent_shape=((4,), (1,)), **SOLVE)
    result = path_independence(layer, _x(dim=4), starts=["random", "mixed"])
    assert float(result.score.min()) > 1 - 1e-10 and result.residuals.shape == (3, 6)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: path_independence(_two_attractors, _x(), starts=[]), "at least one start"),
        (lambda: path_independence(_two_attractors, _x(batch=1)), "batch of 2"),
        (lambda: path_independence(jfb.ImplicitLayer(_two_attractors), _x(), tol=1e-3), "own settings"),
        (lambda: multi_start(_two_attractors, _x(), starts=0), "at least 1"),
        (lambda: multi_start(_two_attractors, _x(), starts="random"), "number of starts or a list"),
        (lambda: multi_start(_two_attractors, _x(), score=lambda u, x: u), "one number per row"),
    ],
)
def test_bad_arguments_are_refused_in_one_line(call, message):
    with pytest.raises(jfb.JfbError, match=message):
        call()


def _separate(T, x, state, **settings):
    return jfb.fixed_point(T, x, u0=state, **settings)


def test_multi_start_keeps_each_samples_start_of_lowest_residual():
    """Three iterations from four starts: the residuals differ by start; each sample gets the start whose own
    solve (alone) ends lowest, and exactly that solve's state."""
    torch.manual_seed(0)
    x = _x(scale=0.1)
    starts = [torch.randn(6, 8, generator=torch.Generator().manual_seed(s), **F64) for s in range(4)]
    settings = dict(solver="picard", tol=1e-12, max_iter=3, on_failure="ignore")
    with torch.no_grad():
        result = multi_start(_two_attractors, x, starts, **settings)
        alone = [_separate(_two_attractors, x, s, **settings) for s in starts]
    residuals = torch.stack([a.stats.abs_residual for a in alone])
    assert torch.allclose(result.residuals, residuals, rtol=1e-12)
    assert torch.equal(result.choice, residuals.argmin(0)) and len(set(result.choice.tolist())) > 1
    chosen = torch.stack([alone[int(k)].value[i] for i, k in enumerate(result.choice)])
    assert torch.equal(result.value, chosen)


def test_a_learned_score_chooses_instead_of_the_residual():
    torch.manual_seed(0)
    result = multi_start(_two_attractors, _x(scale=0.1), 5, score=lambda u, x: -u.sum(1), **SOLVE)
    assert torch.equal(result.choice, (-result.scores).argmax(0))
    assert torch.allclose(result.value.sum(1), -result.scores.min(0).values)


def test_only_the_chosen_solves_receive_gradient():
    """The gradient of the chosen states equals that of one solve from the chosen starts (JFB and IFT)."""
    for backward in ("jfb", "ift"):
        torch.manual_seed(0)
        x = _x(scale=0.1).requires_grad_()
        starts = [torch.randn(6, 8, generator=torch.Generator().manual_seed(s), **F64) for s in range(3)]
        result = multi_start(_two_attractors, x, starts, backward=backward, **SOLVE)
        (grad,) = torch.autograd.grad(result.value.square().sum(), x)
        chosen = torch.stack([starts[int(k)][i] for i, k in enumerate(result.choice)])
        reference = _separate(_two_attractors, x, chosen, backward=backward, **SOLVE).value
        (expected,) = torch.autograd.grad(reference.square().sum(), x)
        assert torch.allclose(grad, expected, atol=1e-9), backward


def test_starts_by_kind_tensor_and_function_with_a_shared_argument():
    torch.manual_seed(0)
    A = jfb.Shared(0.4 * torch.eye(8, **F64))

    def T(u, x):
        inputs, matrix = x
        return torch.tanh(u @ matrix + inputs)

    x = (_x(), A)
    learned = lambda x: torch.full_like(x[0], 0.3)  # noqa: E731
    result = multi_start(T, x, ["zeros", "mixed", torch.ones(6, 8, **F64), learned], **SOLVE)
    assert result.scores.shape == (4, 6) and result.equilibrium.value.shape == (24, 8)
    assert float(result.residuals.max()) <= 1e-12  # a contraction: every start converges


def test_deep_supervision_gradients_are_those_of_the_segments_by_hand():
    """Three segments of depth 4 under JFB: each segment's parameter gradient and output equal a hand-written one
    (4 applications without grad from the previous output, detached; one with grad; the loss)."""
    torch.manual_seed(0)
    W = torch.nn.Parameter(0.3 * torch.randn(6, 6, **F64))
    x, target = _x(batch=5, dim=6), torch.randn(5, 6, **F64)

    def T(u, x):
        return torch.tanh(u @ W.T + x)

    found = []
    for segment in jfb.looped.segments(T, x, 3, solver="picard", tol=None, max_iter=4):
        (grad,) = torch.autograd.grad((segment.value - target).square().sum(), W)
        found.append((segment.value.detach(), grad))
    u = torch.zeros(5, 6, **F64)
    for value, grad in found:
        with torch.no_grad():
            for _ in range(4):
                u = T(u, x)
        out = T(u, x)
        (expected,) = torch.autograd.grad((out - target).square().sum(), W)
        assert torch.allclose(value, out.detach(), atol=1e-14) and torch.allclose(grad, expected, atol=1e-12)
        u = out.detach()
    assert not torch.allclose(found[0][1], found[2][1])  # the segments differ: the state carried over


def test_segments_of_a_layer_can_stop_early_and_refuse_a_bad_count():
    layer = jfb.ImplicitLayer(_contraction(), solver="picard", tol=1e-10, max_iter=100)
    iterations = []
    for segment in jfb.looped.segments(layer, _x(), 10):
        iterations.append(int(segment.stats.iterations.max()))
        if len(iterations) == 2:
            break
    assert iterations[0] > 10 and iterations[1] <= 1  # the second segment starts at the fixed point
    with pytest.raises(jfb.JfbError, match="count"):
        next(jfb.looped.segments(layer, _x(), 0))


def test_halting_stops_each_sample_at_its_own_segment_and_solves_only_the_rest():
    """u <- 0.5 u + x, one step per segment: after m segments u = 2x(1 - 2^-m). The head says done once the first
    feature passes 1: x = 1 halts after 2 segments, x = 0.6 after 3, x = 0.3 never (its limit is 0.6)."""
    rows_solved = []

    def T(u, x):
        rows_solved.append(u.shape[0])
        return 0.5 * u + x

    x = torch.tensor([[1.0, 0.0], [0.6, 0.0], [0.3, 0.0]], **F64)
    head = lambda state: 100 * (state[:, 0] - 1.0)  # noqa: E731
    result = jfb.looped.halted_solve(T, x, head, 6, solver="picard", tol=None, max_iter=1)
    assert result.segments.tolist() == [2, 3, 6] and result.halted.tolist() == [True, True, False]
    by_hand = [2 * x[i] * (1 - 0.5 ** int(m)) for i, m in enumerate(result.segments)]
    assert torch.allclose(result.value, torch.stack(by_hand), atol=1e-14)
    assert rows_solved == [3, 3, 2, 1, 1, 1] and result.saved == pytest.approx(1 - 11 / 18)


def test_the_halting_head_learns_when_the_answer_is_right():
    """TRM's halting loss on a head over the state: trained on states labelled right or wrong, it separates them."""
    torch.manual_seed(0)
    head = jfb.looped.HaltingHead(4)
    optimizer = torch.optim.Adam(head.parameters(), lr=0.1)
    states = torch.randn(256, 4)
    right = states[:, 0] > 0.3
    for _ in range(200):
        loss = jfb.looped.halting_loss(head(states), right)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    accuracy = float(((head(states) > 0) == right).float().mean())
    assert accuracy > 0.97 and float(loss) < 0.15


def test_a_pooled_halting_head_reads_states_of_any_size_by_channel_mean_and_maximum():
    head = jfb.looped.HaltingHead(3, pooled=True)
    with torch.no_grad():
        head.linear.weight.copy_(torch.tensor([[1.0, 0.0, 0.0, 0.0, 2.0, 0.0]]))
        head.linear.bias.zero_()
    small, large = torch.zeros(2, 3, 4, 4), torch.zeros(2, 3, 9, 7)
    small[0, 0], large[1, 1, 8, 6] = 0.5, 3.0  # sample 0: channel 0's mean 0.5; sample 1: channel 1's maximum 3
    assert head(small).tolist() == [0.5, 0.0] and head(large).tolist() == [0.0, 6.0]
    with pytest.raises(jfb.JfbError, match="pooled=True"):
        head(torch.zeros(2, 3))
    with pytest.raises(jfb.JfbError, match="needs pooled=True"):
        jfb.looped.HaltingHead(3, hidden=4)


def test_a_hidden_layer_per_position_lets_the_maximum_find_the_one_position_not_done():
    """A position is done when channel 0 exceeds channel 1, a sample when every position is: the maximum over
    positions of relu(channel 1 - channel 0) is zero exactly then."""
    head = jfb.looped.HaltingHead(2, pooled=True, hidden=1)
    with torch.no_grad():
        head.position[0].weight.copy_(torch.tensor([[-1.0, 1.0]]))
        head.position[0].bias.zero_()
        head.linear.weight.copy_(torch.tensor([[0.0, -100.0]]))  # the pooled mean ignored, the maximum read
        head.linear.bias.fill_(1.0)
    done = torch.tensor([[[1.0, 0.5, 0.9], [0.0, 0.0, 0.0]], [[0.2, 0.3, 0.4], [0.0, 0.1, 0.2]]])  # (B, C, positions)
    not_done = done.clone()
    not_done[0, 1, 2] = 1.5  # the last position of sample 0 is not done
    assert (head(done) > 0).tolist() == [True, True] and (head(not_done) > 0).tolist() == [False, True]
    assert head.features(done).shape == (2, 2)


@pytest.mark.parametrize(("count", "threshold"), [(0, 0.5), (3, 1.0), (3, 0.0)])
def test_halting_refuses_a_bad_count_or_threshold(count, threshold):
    with pytest.raises(jfb.JfbError, match=r"count|threshold"):
        jfb.looped.halted_solve(_two_attractors, _x(), lambda s: s[:, 0], count, threshold=threshold)
