"""Elastic merging training and the head start: levels visited, PYRA rows, the probe fit."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from test_train import coloured_squares, dataset_for, tiny_run_config

from pyra.method.elastic import LevelSampler, head_start_fractions, scaled_schedule
from pyra.method.patch import set_schedule
from pyra.run.head_start import PROBE_MAX_ITER, fit_head, probe_correct
from pyra.run.run_config import build_model
from pyra.run.train import TrainConfig, train

TARGET = (2, 1) + (0,) * 10  # resolved (capped): 32 px ViT-Tiny has 4 patches + the class token


def _recorded_schedules(model: torch.nn.Module) -> list[tuple[int, ...]]:
    """Every schedule the model merges at in a training forward, in order."""
    seen: list[tuple[int, ...]] = []

    def hook(module, args):
        if module.training:
            seen.append(tuple(module.merge_config.schedule))

    model.register_forward_pre_hook(hook)
    return seen


def test_scaled_schedule_rounds_each_layer():
    assert scaled_schedule([13, 11, 1, 0], 0.5) == [6, 6, 0, 0]  # round half to even, as Python rounds
    assert scaled_schedule([13, 11, 1, 0], 0.0) == [0, 0, 0, 0]
    assert scaled_schedule([13, 11, 1, 0], 1.0) == [13, 11, 1, 0]
    with pytest.raises(ValueError, match="fraction"):
        scaled_schedule([1], 1.5)


def test_level_sampler_is_seeded_and_follows_its_rule():
    a, b, c = LevelSampler("uniform", 3), LevelSampler("uniform", 3), LevelSampler("uniform", 4)
    draws_a = [a.draw() for _ in range(200)]
    assert draws_a == [b.draw() for _ in range(200)] != [c.draw() for _ in range(200)]
    values = np.array([d[0] for d in draws_a])
    assert all(len(d) == 1 for d in draws_a) and values.min() >= 0 and values.max() < 1
    assert 0.4 < values.mean() < 0.6 and (values < 0.25).sum() > 30 and (values > 0.75).sum() > 30
    sandwich = [LevelSampler("sandwich", 0).draw() for _ in range(3)]
    assert all(d[:2] == (0.0, 1.0) and 0 <= d[2] < 1 for d in sandwich)
    assert LevelSampler("off", 0).draw() == (1.0,)
    assert head_start_fractions("off") == (1.0,) and head_start_fractions("sandwich") == (0.0, 1.0)
    with pytest.raises(ValueError, match="elastic must be one of"):
        LevelSampler("sometimes", 0)


@pytest.mark.parametrize("mode, passes", [("uniform", 1), ("sandwich", 3), ("sandwich-labels", 3), ("off", 1)])
def test_elastic_training_merges_at_the_drawn_levels(mode, passes):
    model = build_model(tiny_run_config(schedule=TARGET))
    seen = _recorded_schedules(model)
    config = TrainConfig(epochs=2, batch_size=6, elastic=mode, head_start=False, seed=5)
    result = train(model, dataset_for(model, coloured_squares()), config)
    assert result.status == "completed" and result.elastic == mode and result.steps == 6
    expected_levels = LevelSampler(mode, 5)
    expected = []
    for record in result.history:
        levels = expected_levels.draw()
        if mode == "off":
            assert record["levels"] is None
        else:
            assert record["levels"] == [round(f, 4) for f in levels]
        expected += [tuple(scaled_schedule(TARGET, f)) for f in levels]
    assert seen == expected and len(seen) == passes * result.steps
    assert tuple(model.merge_config.schedule) == TARGET  # back at the target after training
    if mode.startswith("sandwich"):  # every step trains uncompressed, at the target, and somewhere between
        assert all(s[0] == (0,) * 12 and s[1] == TARGET for s in zip(seen[::3], seen[1::3]))


@pytest.mark.parametrize("mode, label_passes", [("sandwich", 1), ("sandwich-labels", 3)])
def test_the_sandwich_distils_its_later_passes_unless_told_to_use_the_labels(mode, label_passes, monkeypatch):
    """Cross-entropy on the labels: once per step (the uncompressed pass) with in-place distillation,
    at every pass without it."""
    import pyra.run.train as training

    calls = []
    real = training.F.cross_entropy
    monkeypatch.setattr(training.F, "cross_entropy", lambda *a, **k: calls.append(1) or real(*a, **k))
    model = build_model(tiny_run_config(schedule=TARGET))
    config = TrainConfig(epochs=1, batch_size=6, elastic=mode, head_start=False, eval_every_epoch=False, seed=5)
    result = train(model, dataset_for(model, coloured_squares()), config)
    assert result.status == "completed" and len(calls) == label_passes * result.steps


def test_a_model_that_does_not_merge_trains_one_plain_pass():
    model = build_model(tiny_run_config(method="none", schedule=(0,) * 12))
    seen = _recorded_schedules(model)
    result = train(model, dataset_for(model, coloured_squares()), TrainConfig(epochs=1, batch_size=6))
    assert result.elastic == "off" and len(seen) == result.steps == 3


def test_pyra_at_a_smaller_level_uses_the_first_rows_only():
    model = build_model(tiny_run_config(schedule=TARGET)).eval()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        model.blocks[0].pyra.w_d.normal_()  # a non-zero token gate, so w_r matters
        set_schedule(model, [1] + [0] * 11)
        before_small = model(x)
        set_schedule(model, list(TARGET))
        before_full = model(x)
        model.blocks[0].pyra.w_r[1:] += 5.0  # rows the smaller level never reads
        set_schedule(model, [1] + [0] * 11)
        torch.testing.assert_close(model(x), before_small, rtol=0, atol=0)
        set_schedule(model, list(TARGET))
        assert not torch.allclose(model(x), before_full)


def test_elastic_pyra_gradients_reach_only_the_rows_in_use():
    model = build_model(tiny_run_config(schedule=TARGET))
    with torch.no_grad():
        model.blocks[0].pyra.w_d.normal_()
    set_schedule(model, [1] + [0] * 11)
    model.train()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    model(x).sum().backward()
    grad = model.blocks[0].pyra.w_r.grad
    assert grad[0].abs().sum() > 0 and torch.count_nonzero(grad[1:]) == 0


def _independent_features(model: torch.nn.Module, dataset, schedule) -> tuple[np.ndarray, np.ndarray]:
    """Pre-logit features computed image by image, without the engine's predict loop."""
    set_schedule(model, list(schedule))
    model.eval()
    features, labels = [], []
    with torch.no_grad():
        for i in range(len(dataset)):
            image, label = dataset[i]
            tokens = model.forward_features(image[None])
            features.append(model.forward_head(tokens, pre_logits=True)[0].numpy())
            labels.append(label)
    return np.stack(features), np.array(labels)


@pytest.mark.parametrize("num_classes", [3, 2])
def test_head_start_equals_scikit_learns_fit_on_the_same_features(num_classes):
    records = [r for r in coloured_squares(per_class=5) if r.label < num_classes]
    classes = tuple(["red", "green", "blue"][:num_classes])
    model = build_model(tiny_run_config(schedule=TARGET, num_classes=num_classes, classes=classes))
    dataset = dataset_for(model, records)
    schedules = [[0] * 12, list(TARGET)]
    parts = [_independent_features(model, dataset, s) for s in schedules]
    features, labels = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    reference = LogisticRegression(C=0.05, max_iter=PROBE_MAX_ITER).fit(features.astype(np.float64), labels)
    set_schedule(model, list(TARGET))
    result = fit_head(model, dataset, schedules, 0.05)
    assert result.images == len(records) and result.levels == 2 and result.seconds >= 0
    logits = features @ model.head.weight.detach().numpy().T + model.head.bias.detach().numpy()
    probabilities = torch.from_numpy(logits).softmax(dim=1).numpy()
    np.testing.assert_allclose(probabilities, reference.predict_proba(features), atol=1e-4)
    assert result.train_accuracy == pytest.approx(reference.score(features, labels))
    assert tuple(model.merge_config.schedule) == TARGET  # the head start leaves the schedule as it was


def test_train_runs_the_head_start_at_the_ends_of_its_range():
    model = build_model(tiny_run_config(schedule=TARGET))
    seen = []  # (training?, schedule) of every pass through the network, features-only passes included
    model.patch_embed.register_forward_pre_hook(lambda module, args: seen.append(
        (model.training, tuple(model.merge_config.schedule))))
    config = TrainConfig(epochs=1, batch_size=18, elastic="sandwich")
    result = train(model, dataset_for(model, coloured_squares()), config)
    assert result.head_start is not None and result.head_start.levels == 2 and result.head_start.images == 18
    frozen = [schedule for training, schedule in seen if not training]
    assert frozen == [(0,) * 12, TARGET]  # one batch of features per level, in eval mode, before any step
    assert seen.index((True, (0,) * 12)) == 2
    off = train(build_model(tiny_run_config(schedule=TARGET)), dataset_for(model, coloured_squares()),
                replace(config, head_start=False))
    assert off.head_start is None


def test_probe_on_separable_colours_is_right():
    model = build_model(tiny_run_config(schedule=TARGET))
    dataset = dataset_for(model, coloured_squares(per_class=6))
    correct = probe_correct(model, dataset, dataset_for(model, coloured_squares(per_class=4, seed=9)), TARGET)
    assert correct.shape == (12,) and correct.mean() > 0.9
