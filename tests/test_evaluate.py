"""pyra.run.metrics: metrics against a hand computation, merge settings restored, interleaved timing."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import timm
import torch
from conftest import image_batch, make_tiny
from torch import nn
from torch.utils.data import TensorDataset

import pyra
import pyra.run.predict
from pyra.report.stats import accuracy_interval
from pyra.run.metrics import classification_report, evaluate
from pyra.run.speed import SpeedStats, Spread, measure_speed, speedup

CLASSES = ["cat", "dog", "fox"]


def test_classification_report_matches_hand_computation():
    labels = np.array([0, 0, 0, 1, 1, 2])
    predicted = np.array([0, 0, 1, 1, 2, 2])
    report = classification_report(SimpleNamespace(labels=labels, predicted=predicted), CLASSES)

    assert report.confusion == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]  # rows: true class
    # F1 per class: cat P=2/2 R=2/3 -> 0.8; dog P=1/2 R=1/2 -> 0.5; fox P=1/2 R=1/1 -> 2/3
    assert report.macro_f1 == pytest.approx((0.8 + 0.5 + 2 / 3) / 3)
    assert report.per_class_accuracy == pytest.approx({"cat": 2 / 3, "dog": 0.5, "fox": 1.0})
    wilson = accuracy_interval(4, 6)
    assert (report.accuracy, report.low, report.high, report.n) == pytest.approx((4 / 6, wilson.low, wilson.high, 6))
    assert report.to_dict()["classes"] == CLASSES


def test_classification_report_class_without_images_and_bad_labels():
    report = classification_report(SimpleNamespace(labels=np.array([0, 1]), predicted=np.array([0, 1])), CLASSES)
    assert report.to_dict()["per_class_accuracy"]["fox"] is None  # nan -> None in JSON
    assert report.confusion[2] == [0, 0, 0]
    with pytest.raises(ValueError, match="out of range for 3 classes"):
        classification_report(SimpleNamespace(labels=np.array([0, 3]), predicted=np.array([0, 1])), CLASSES)


def _dataset(model: nn.Module, n: int = 6) -> TensorDataset:
    return TensorDataset(image_batch(model, batch=n), torch.arange(n) % 3)


def test_tome_at_r0_on_patched_model_equals_unpatched():
    model = make_tiny("vit_tiny_patch16_224", num_classes=3)
    dataset = _dataset(model)
    _, expected = evaluate(model, dataset, CLASSES)
    pyra.patch(model, "none", 0)
    report, got = evaluate(model, dataset, CLASSES, schedule=0, method="tome")
    np.testing.assert_allclose(got.probabilities, expected.probabilities, atol=1e-5, rtol=0)
    np.testing.assert_array_equal(got.predicted, expected.predicted)
    assert report.n == len(dataset)


def test_evaluate_at_other_setting_restores_merge_config(monkeypatch):
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=3, img_size=128).eval()
    pyra.add_lora(model, rank=2)
    pyra.patch(model, "pyra", 4)  # 65 tokens: r = 4 in every layer, never capped
    previous = model.merge_config
    seen = []
    real_predict = pyra.run.predict.predict

    def recording_predict(model, dataset, **kwargs):
        seen.append(model.merge_config)
        return real_predict(model, dataset, **kwargs)

    monkeypatch.setattr(pyra.run.predict, "predict", recording_predict)
    dataset = _dataset(model, n=2)
    evaluate(model, dataset, CLASSES, schedule=2, method="tome")  # training-free ToMe
    evaluate(model, dataset, CLASSES, schedule=3)  # PYRA below its trained r
    assert (seen[0].method, seen[0].schedule[0]) == ("tome", 2)
    assert (seen[1].method, seen[1].schedule[0]) == ("pyra", 3)
    assert model.merge_config is previous

    with pytest.raises(ValueError, match="at most 4 tokens"):
        evaluate(model, dataset, CLASSES, schedule=8)  # more than PYRA was trained for
    assert model.merge_config is previous

    def failing_predict(model, dataset, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(pyra.run.predict, "predict", failing_predict)
    with pytest.raises(RuntimeError):
        evaluate(model, dataset, CLASSES, method="tome")
    assert model.merge_config is previous


def test_evaluate_at_a_schedule_needs_a_patched_model():
    model = make_tiny("vit_tiny_patch16_224", num_classes=3)
    with pytest.raises(ValueError, match="patched model"):
        evaluate(model, _dataset(model), CLASSES, schedule=2, method="tome")


class Recorder(nn.Module):
    """Appends (name, batch size, training flag) to a shared log on every forward."""

    def __init__(self, name: str, log: list) -> None:
        super().__init__()
        self.name, self.log = name, log
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.log.append((self.name, x.shape[0], self.training))
        return x.mean() * self.scale


def test_measure_speed_interleaves_and_restores_threads_and_mode():
    log: list = []
    models = {name: Recorder(name, log).train() for name in "ABC"}
    threads_before = torch.get_num_threads()
    threads = 1 if threads_before != 1 else 2
    stats = measure_speed(models, img_size=4, batch_size=3, repeats=2, warmup=1, threads=threads)

    one_round = [(n, 1, False) for n in "ABC"] + [(n, 3, False) for n in "ABC"]
    assert log == one_round * 3  # 1 warm-up + 2 recorded rounds, eval mode during timing
    assert list(stats) == ["A", "B", "C"]
    for s in stats.values():
        assert (s.repeats, s.batch_size, s.threads) == (2, 3, threads)
        assert s.latency_ms.min <= s.latency_ms.median <= s.latency_ms.max
        assert s.throughput.p25 <= s.throughput.median <= s.throughput.p75
        assert set(s.to_dict()["throughput"]) >= {"median", "p25", "p75", "min", "max", "iqr"}
    assert torch.get_num_threads() == threads_before
    assert all(m.training for m in models.values())


def _stats(latency_ms: float, throughput: float) -> SpeedStats:
    return SpeedStats(Spread.of([latency_ms]), Spread.of([throughput]), 8, 1, 0, 1, 32, "cpu")


def test_speedup_uses_medians():
    stats = {"uncompressed": _stats(10.0, 100.0), "tome": _stats(5.0, 250.0)}
    assert speedup(stats) == pytest.approx({"uncompressed": 1.0, "tome": 2.5})
    assert speedup(stats, measure="latency") == pytest.approx({"uncompressed": 1.0, "tome": 2.0})
    with pytest.raises(ValueError, match="baseline"):
        speedup(stats, baseline="timm")
