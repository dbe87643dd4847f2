"""Cached fixed-point decoding (jfb.decoding.generate): the cache gives what re-solving the whole sequence gives,
each sampling option does what it says (seeded, reproducible), and what cannot be decoded is refused."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from torch import nn

from jfb.decoding import DecodeOptions, generate, next_tokens
from jfb.errors import JfbError
from jfb.pretrained import pretrained_path
from jfb.train.checkpoint import load_checkpoint
from jfb.workloads import WORKLOADS
from jfb.workloads.engines import jfb_engine
from jfb.workloads.language import DeqLanguageModel
from jfb.workloads.saved import restore_workload

TIGHT = dict(tol=1e-11, max_iter=300)


def _model(context: int = 48, seed: int = 0) -> DeqLanguageModel:
    torch.manual_seed(seed)
    model = DeqLanguageModel(32, 4, context, jfb_engine("jfb")).double().eval()
    with torch.no_grad():  # a trained model's read-out is peaked; a random one's is flat (ties break greedy)
        model.head.weight.mul_(8.0)
    return model


def _full_solve(model: DeqLanguageModel, tokens: torch.Tensor):
    operator, x = model.prompt_problem(tokens[None])
    with torch.no_grad():
        u = torch.zeros_like(x)
        for _ in range(300):
            u = operator(u, x)
    return u, x


def test_cached_greedy_decoding_gives_the_tokens_and_states_of_re_solving_the_whole_sequence():
    model = _model()
    prompts = [b"def f(x):\n", b"import os", b"x"]  # three lengths: three prompt solves, then one batch
    cached = generate(model, prompts, max_new_tokens=30, **TIGHT)
    resolved = generate(model, prompts, max_new_tokens=30, cache=False, **TIGHT)
    assert torch.equal(cached.tokens, resolved.tokens)
    assert cached.slides == 0 and cached.converged.all() and resolved.converged.all()
    # the cached keys and values are those of the whole sequence's equilibrium, to the solve's tolerance
    for row, prompt in enumerate(prompts):
        sequence = torch.tensor(list(prompt) + cached.tokens[row, :-1].tolist())
        u, x = _full_solve(model, sequence)
        _, keys, values = model.block.queries_keys_values(u + x)
        held = int(cached.cache.lengths[row])
        assert held == len(sequence)
        assert (cached.cache.keys[row, :, :held] - keys[0]).abs().max() < 1e-8
        assert (cached.cache.values[row, :, :held] - values[0]).abs().max() < 1e-8


def _shipped_lm() -> DeqLanguageModel:
    path = pretrained_path("lm")
    return restore_workload(path, load_checkpoint(path), WORKLOADS)[1]


def test_on_the_shipped_model_a_warm_start_saves_iterations_and_changes_no_token():
    """(On a random model the previous position's state is no better a start than zeros: the claim is the trained
    model's, as the results page says.)"""
    model = _shipped_lm()
    prompts = [b"    def __init__(self, name, value=None):\n        self.", b"import os\nimport sys\n\n"]
    warm = generate(model, prompts, max_new_tokens=60, tol=1e-4, max_iter=100)
    cold = generate(model, prompts, max_new_tokens=60, tol=1e-4, max_iter=100, warm_start=False)
    assert torch.equal(warm.tokens, cold.tokens) and warm.converged.all() and cold.converged.all()
    assert warm.iterations[:, 1:].float().mean() < 0.8 * cold.iterations[:, 1:].float().mean()


def test_past_the_context_the_window_slides_by_half_and_decoding_goes_on():
    model = _model(context=16)
    out = generate(model, [b"abcdefghij"], max_new_tokens=30, **TIGHT)
    # positions 10..15 fill the cache, the 17th token starts a window of 8; it fills again after 8 more
    assert out.tokens.shape == (1, 30) and out.slides == 3
    assert int(out.cache.lengths[0]) <= 16 and out.converged.all()
    cropped = generate(model, [bytes(range(40))], max_new_tokens=2, **TIGHT)
    assert cropped.cropped_prompts == 1 and cropped.prompt_lengths == [40]


def test_per_token_statistics_are_those_of_each_solve():
    model = _model()
    loose = generate(model, [b"hello"], max_new_tokens=12, tol=1e-2, max_iter=50)
    capped = generate(model, [b"hello"], max_new_tokens=12, tol=1e-12, max_iter=3)
    assert loose.iterations.shape == loose.residuals.shape == loose.converged.shape == (1, 12)
    assert loose.converged.all() and (loose.residuals <= 1e-2).all()
    assert (capped.iterations == 3).all() and not capped.converged.any() and (capped.residuals > 1e-12).all()
    summary = capped.summary()
    assert summary["not_converged"] == 12 and summary["iterations_max"] == 3 and summary["new_tokens"] == 12


def test_generate_leaves_the_global_random_state_alone():
    model = _model()
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    generate(model, [b"abc"], max_new_tokens=4, do_sample=True, **TIGHT)
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.slow
def test_sampling_is_reproducible_from_its_seed_and_top_k_1_is_greedy():
    model = _model()
    options = dict(max_new_tokens=25, do_sample=True, **TIGHT)
    first = generate(model, [b"abc", b"de"], seed=3, **options)
    again = generate(model, [b"abc", b"de"], seed=3, **options)
    other = generate(model, [b"abc", b"de"], seed=4, **options)
    assert torch.equal(first.tokens, again.tokens) and not torch.equal(first.tokens, other.tokens)
    greedy = generate(model, [b"abc"], max_new_tokens=25, **TIGHT)
    assert torch.equal(generate(model, [b"abc"], top_k=1, **options).tokens, greedy.tokens)
    assert torch.equal(generate(model, [b"abc"], top_p=1e-9, **options).tokens, greedy.tokens)


LOGITS = torch.tensor([[2.0, 1.0, 0.5, 0.0, -1.0]])


def _frequencies(options: DecodeOptions, draws: int = 20_000) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    picks = next_tokens(LOGITS.expand(draws, -1), options, generator)
    return torch.bincount(picks, minlength=5).double() / draws


def test_temperature_samples_from_the_tempered_softmax():
    for temperature in (0.5, 1.0, 2.0):
        expected = (LOGITS[0].double() / temperature).softmax(0)
        measured = _frequencies(DecodeOptions(do_sample=True, temperature=temperature))
        assert (measured - expected).abs().max() < 0.015, temperature


def test_top_k_and_top_p_keep_the_most_likely_tokens_renormalised():
    measured = _frequencies(DecodeOptions(do_sample=True, top_k=2))
    expected = torch.zeros(5, dtype=torch.float64)
    expected[:2] = LOGITS[0, :2].double().softmax(0)
    assert (measured - expected).abs().max() < 0.015
    # probabilities 0.563, 0.207, 0.126, 0.076, 0.028: top_p 0.7 keeps the first two (0.563 < 0.7 <= 0.770)
    assert (_frequencies(DecodeOptions(do_sample=True, top_p=0.7)) - expected).abs().max() < 0.015
    assert (_frequencies(DecodeOptions(do_sample=True, top_p=0.78))[:3] > 0).all()


def test_options_that_do_nothing_or_cannot_hold_are_refused_in_one_line():
    with pytest.raises(JfbError, match="do_sample=True"):
        DecodeOptions(temperature=0.7)
    with pytest.raises(JfbError, match="top_p"):
        DecodeOptions(do_sample=True, top_p=0.0)
    with pytest.raises(JfbError, match="tol"):
        DecodeOptions(tol=0.0)
    with pytest.raises(JfbError, match="at least one token"):
        generate(_model(), [b""])


class _Bidirectional(DeqLanguageModel):
    """Attention that sees later positions: no cache can be right."""

    def prompt_problem(self, tokens):
        block, x = super().prompt_problem(tokens)

        def operator(u, x):
            h = u + x
            q, k, v = block.queries_keys_values(h)
            return block.attention_and_mlp(h, nn.functional.scaled_dot_product_attention(q, k, v))

        return operator, x


def test_a_non_causal_operator_and_a_model_without_a_cache_are_refused():
    torch.manual_seed(0)
    model = _Bidirectional(32, 4, 48, jfb_engine("jfb")).double()
    for prompts in ([b"abc"], [b"a"]):  # a one-token prompt too (checked on two positions of it)
        with pytest.raises(JfbError, match="causal"):
            generate(model, prompts, max_new_tokens=2)
    with pytest.raises(JfbError, match="cannot generate: it lacks context, prompt_problem"):
        generate(nn.Linear(2, 2), [b"abc"])


@dataclass
class RunningSum:
    total: torch.Tensor  # (batch, width): the sum of V u_s over the positions held
    lengths: torch.Tensor  # (batch,): the positions held (generate slides the window when it reaches context)


class CumulativeMean(nn.Module):
    """The documented recipe for a user's own causal T: ``u_t = tanh(W u_t + x_t + mean_{s<=t} V u_s)``; the cache
    holds the running sum of ``V u_s`` over a row's positions."""

    def __init__(self, width: int = 8, vocabulary: int = 16, context: int = 32) -> None:
        super().__init__()
        self.context = context
        self.embed = nn.Embedding(vocabulary, width)
        self.W, self.V = nn.Linear(width, width, bias=False), nn.Linear(width, width, bias=False)
        self.head = nn.Linear(width, vocabulary)
        with torch.no_grad():
            self.W.weight.mul_(0.3)
            self.V.weight.mul_(0.3)

    def prompt_problem(self, tokens):
        def operator(u, x):
            counts = torch.arange(1, u.shape[1] + 1, dtype=u.dtype)[None, :, None]
            return torch.tanh(self.W(u) + x + self.V(u).cumsum(1) / counts)

        return operator, self.embed(tokens)

    def new_cache(self, batch, like):
        return RunningSum(like.new_zeros(batch, like.shape[-1]), torch.zeros(batch, dtype=torch.long))

    def store(self, cache, rows, u, x):
        cache.total[rows], cache.lengths[rows] = self.V(u).sum(1), u.shape[1]

    def token_problem(self, cache, rows, tokens):
        def operator(u, inputs):
            x, total, count = inputs
            return torch.tanh(self.W(u) + x + (total[:, None] + self.V(u)) / (count[:, None, None] + 1))

        return operator, (self.embed(tokens)[:, None], cache.total[rows], cache.lengths[rows].to(cache.total.dtype))

    def append(self, cache, rows, u, x):
        cache.total[rows] += self.V(u)[:, 0]
        cache.lengths[rows] += 1

    def read_out(self, u):
        return self.head(u)


def test_a_users_own_causal_operator_decodes_through_the_same_loop():
    torch.manual_seed(1)
    model = CumulativeMean().double()
    prompts = [torch.tensor([1, 2, 3]), torch.tensor([4, 5])]
    cached = generate(model, prompts, max_new_tokens=20, **TIGHT)
    resolved = generate(model, prompts, max_new_tokens=20, cache=False, **TIGHT)
    assert torch.equal(cached.tokens, resolved.tokens) and cached.converged.all()


def test_the_command_line_continues_every_line_of_a_prompts_file_and_re_solves_without_a_cache(tmp_path, capsys):
    """``--prompts-file``: one batch of its lines; ``--no-cache`` gives the cached greedy bytes while they fit the
    context (here 2-9 prompt bytes + 6 new ones, context 64)."""
    import json

    from jfb.cli.main import main

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("import os\n\ndef f\n")  # the empty line is skipped
    outputs = []
    for flags in ([], ["--no-cache"]):
        argv = [
            "generate",
            "lm",
            "--prompts-file",
            str(prompts),
            "--max-bytes",
            "6",
            "--tol",
            "1e-6",
            "--max-iter",
            "200",
        ]
        argv += ["--json", "--no-progress"]  # a tight tolerance: no near-tie decided by the solve's error
        assert main([*argv, *flags]) == 0
        outputs.append(json.loads(capsys.readouterr().out.strip().splitlines()[-1]))
    cached, resolved = outputs
    assert cached["prompts"] == ["import os", "def f"] and cached["rows"] == 2 and cached["new_tokens"] == 6
    assert cached["texts"] == resolved["texts"] and resolved["window_slides"] == 0
