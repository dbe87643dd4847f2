"""Training levers: a depth schedule, the evaluation depth, label smoothing and a weight average."""

from __future__ import annotations

import json

import pytest
import torch
from training import SMALL, config_of, preempted_and_resumed, quiet

from jfb.errors import JfbError
from jfb.train import TrainConfig, fit, load_checkpoint, restore_model, setup_run, train
from jfb.train.averaging import WeightAverage


def _records(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_the_training_depth_grows_linearly_and_evaluation_has_its_own_depth(tmp_path):
    config = config_of(**SMALL, epochs=3, max_iter=6, depth_start=2, eval_max_iter=3)
    assert [config.training_depth(e) for e in range(3)] == [2, 4, 6]
    train(config, tmp_path, progress=False, log=lambda m: None)
    records = _records(tmp_path)
    assert [r["train_forward_iters_mean"] for r in records] == [2.0, 4.0, 6.0]
    assert records[-1]["test_forward_iters_mean"] == 3.0


def test_a_depth_schedule_needs_a_fixed_depth_and_a_start_within_it():
    with pytest.raises(JfbError, match="depth_start needs a fixed training depth"):
        config_of(depth_start=2)
    with pytest.raises(JfbError, match=r"depth_start must be in \[1, max_iter = 4\], got 5"):
        config_of(tol=None, max_iter=4, depth_start=5)


def test_the_weight_average_follows_its_recurrence():
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    average = WeightAverage(model, decay=0.75)
    start = model[0].weight.detach().clone()
    with torch.no_grad():
        model[0].weight.add_(1.0)
    model[1].num_batches_tracked.fill_(7)
    average.update(model)
    assert torch.allclose(average.average["0.weight"], start + 0.25)
    assert int(average.average["1.num_batches_tracked"]) == 7
    with average.applied(model):
        assert torch.allclose(model[0].weight, start + 0.25)
    assert torch.allclose(model[0].weight, start + 1.0)


@pytest.mark.slow
def test_the_average_is_what_is_evaluated_saved_and_resumed_exactly(tmp_path):
    config = config_of(**SMALL, epochs=2, max_iter=4, ema_decay=0.9, label_smoothing=0.1, checkpoint_every=0)
    whole = train(config, tmp_path / "whole", progress=False, log=lambda m: None)
    best = load_checkpoint(tmp_path / "whole" / "best.pt")
    assert "average" in best and not torch.equal(best["average"]["head.fc.weight"], best["model"]["head.fc.weight"])
    model, _ = restore_model(tmp_path / "whole" / "best.pt")
    assert torch.equal(model.state_dict()["head.fc.weight"], best["average"]["head.fc.weight"])

    resumed = preempted_and_resumed(config, tmp_path / "split")
    assert resumed.test_acc_last == whole.test_acc_last
    last_whole, last_split = (
        load_checkpoint(tmp_path / "whole" / "last.pt"),
        load_checkpoint(tmp_path / "split" / "last.pt"),
    )
    for key, value in last_whole["average"].items():
        assert torch.equal(value, last_split["average"][key]), key


def test_the_default_mnist_recipe_grows_its_depth_from_2_to_6():
    from jfb.train import load_target

    default = TrainConfig.from_dict(load_target("mnist")[0])
    assert (default.depth_start, default.solve.max_iter, default.augment, default.batch_size) == (2, 6, True, 256)
    assert [default.training_depth(e) for e in range(default.epochs)] == [2, 3, 3, 4, 4, 5, 5, 6]


def _jacobian_norm(run_dir) -> float:
    """||J_T(u*)||_F^2 / d on 200 training images, in training mode with frozen statistics (the penalty's own estimate,
    averaged over 20 probes)."""
    from jfb.backward import FixedPointMap
    from jfb.frozen import frozen_running_stats
    from jfb.regularizers import jacobian_frobenius
    from jfb.train import load_data

    model, config = restore_model(run_dir / "last.pt")
    data = load_data(config)
    images = data.normalize(data.train.images[:200])
    model.train()
    with torch.no_grad(), frozen_running_stats(model):
        q = model.embedding(images)
        u_star = model.implicit(q)
    flat_q = q.contiguous()
    T = FixedPointMap(
        lambda u: model.operator(u.view_as(u_star), flat_q).reshape(u.shape),
        lambda: frozen_running_stats(model),
        1,
        None,
    )
    torch.manual_seed(0)
    return float(jacobian_frobenius(*T.linearization(u_star.reshape(200, -1)), probes=20))


@pytest.mark.slow
def test_the_jacobian_penalty_shrinks_the_jacobian_and_correction_adds_its_iterates(tmp_path):
    plain = config_of(**SMALL, epochs=3, max_iter=4)
    train(plain, tmp_path / "plain", progress=False, log=lambda m: None)
    penalised = config_of(**SMALL, epochs=3, max_iter=4, jacobian_penalty=5.0, jacobian_probes=2)
    train(penalised, tmp_path / "penalised", progress=False, log=lambda m: None)
    assert _jacobian_norm(tmp_path / "penalised") < 0.8 * _jacobian_norm(tmp_path / "plain")

    corrected = config_of(**SMALL, epochs=1, max_iter=6, correction=2)
    run = setup_run(corrected, tmp_path / "corrected", progress=False, log=lambda m: None)
    fit(run)
    train(config_of(**SMALL, epochs=1, max_iter=6), tmp_path / "uncorrected", progress=False, log=quiet)
    weights = [load_checkpoint(tmp_path / d / "last.pt")["model"] for d in ("corrected", "uncorrected")]
    KEY = "implicit.operator.blocks.0.conv1.weight"
    assert not torch.equal(weights[0][KEY], weights[1][KEY])  # the loss acts
    assert _records(tmp_path / "corrected")[0]["train_acc"] > 20.0  # and it trains (chance: 10%)
    run.model.train()
    prediction = run.model(run.data.normalize(run.data.train.images[:8]), details=True)
    assert len(prediction.correction_logits) == 2  # S of T(u_2) and T(u_4) of the 6 iterates
    assert prediction.equilibrium.stats.regularizer_evals == 2


def test_packaged_recipes_load_by_name_and_unknown_names_list_them():
    from jfb.train import load_target
    from jfb.train.recipes import packaged_recipes

    assert {"mnist", "mnist-long"} <= set(packaged_recipes())
    long = TrainConfig.from_dict(load_target("mnist-long")[0])
    assert (long.solve.max_iter, long.epochs, long.ema_decay, long.precision) == (8, 20, 0.999, "auto")
    with pytest.raises(JfbError, match=r"choose one of mnist, svhn, cifar10, mnist-long or a \.toml file"):
        load_target("mnist-short")
