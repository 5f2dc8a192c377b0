"""Training: lr schedule, optimiser groups, a PYRA lr that takes effect, learning, cancel, divergence."""
from __future__ import annotations

import math
import threading

import numpy as np
import pytest
import torch

from pyra.backbones.factory import data_config
from pyra.data.datasets import ImageDataset, ImageRecord, make_transform
from pyra.method.parameters import parameter_kind
from pyra.run.predict import predict
from pyra.run.run_config import RunConfig, build_model
from pyra.run.train import TrainConfig, build_optimizer, lr_at, train

COLOURS = {"red": (220, 40, 40), "green": (40, 200, 60), "blue": (50, 60, 230)}


def tiny_run_config(**overrides) -> RunConfig:
    """Random-init ViT-Tiny at 32 px: 2x2 patches + class token, so PYRA merges 1 token in
    blocks 0-2 (the resolved form of schedule 1)."""
    settings = dict(backbone="random:vit_tiny_patch16_224", img_size=32, num_classes=3, classes=tuple(COLOURS),
                    schedule=(1, 1, 1) + (0,) * 9, method="pyra", lora_rank=4)
    return RunConfig(**(settings | overrides))


def coloured_squares(per_class: int = 6, seed: int = 0) -> list[ImageRecord]:
    """per_class 8x8 images of each colour, brightness jittered so no two are identical."""
    rng = np.random.default_rng(seed)
    records = []
    for label, (name, rgb) in enumerate(COLOURS.items()):
        for i in range(per_class):
            pixels = np.clip(np.array(rgb) * rng.uniform(0.7, 1.1) + rng.normal(0, 8, (8, 8, 3)), 0, 255)
            records.append(ImageRecord(label, f"{name}/{i}", array=pixels.astype(np.uint8)))
    return records


def dataset_for(model: torch.nn.Module, records: list[ImageRecord]) -> ImageDataset:
    return ImageDataset(records, make_transform(data_config(model), img_size=32))


@pytest.fixture
def model() -> torch.nn.Module:
    return build_model(tiny_run_config())


def trainable_copy(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


# ---------------------------------------------------------------- schedule and config


def test_lr_warms_up_linearly_then_follows_a_cosine():
    values = [lr_at(step, 10, 2, 1.0, 0.0) for step in range(11)]
    assert values[:3] == [0.0, 0.5, 1.0]  # linear from 0, peak at the end of warm-up
    assert values[6] == pytest.approx(0.5)  # half-way through the cosine
    assert values[4] == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
    assert values[10] == pytest.approx(0.0)  # reaches the floor at the end
    assert all(a >= b for a, b in zip(values[2:], values[3:]))  # monotone after warm-up
    assert lr_at(6, 10, 2, 2e-3, 0.1) == pytest.approx(2e-4 + (2e-3 - 2e-4) * 0.5)
    assert lr_at(10, 10, 2, 2e-3, 0.1) == pytest.approx(2e-4)
    assert lr_at(0, 1, 0, 1e-3, 0.0) == 1e-3  # no warm-up: the first step runs at the peak


@pytest.mark.parametrize("bad, word", [
    (dict(epochs=0), "epochs"), (dict(lr=0.0), "lr"), (dict(pyra_lr=-1e-3), "pyra_lr"),
    (dict(batch_size=0), "batch_size"), (dict(grad_clip=0.0), "grad_clip"),
    (dict(warmup_fraction=1.0), "warmup_fraction"), (dict(lr=float("nan")), "lr"),
])
def test_train_config_rejects_bad_values_by_name(bad, word):
    with pytest.raises(ValueError, match=word):
        TrainConfig(**bad)


# ---------------------------------------------------------------- optimiser groups


def test_optimizer_groups_split_lora_head_and_pyra(model):
    config = TrainConfig(lr=1e-3, pyra_lr=3e-4, weight_decay=0.05)
    optimizer = build_optimizer(model, config)
    groups = {g["name"]: g for g in optimizer.param_groups}
    assert set(groups) == {"lora_head_decay", "lora_head_no_decay", "pyra"}
    kinds = {id(p): (parameter_kind(n), p) for n, p in model.named_parameters()}
    for name, group in groups.items():
        group_kinds = {kinds[id(p)][0] for p in group["params"]}
        assert group["base_lr"] == group["lr"]
        if name == "pyra":
            assert group_kinds == {"pyra"} and group["lr"] == 3e-4 and group["weight_decay"] == 0.0
        else:
            assert group_kinds <= {"lora", "head"} and group["lr"] == 1e-3
    assert all(p.ndim >= 2 for p in groups["lora_head_decay"]["params"])
    assert groups["lora_head_decay"]["weight_decay"] == 0.05
    assert all(p.ndim < 2 for p in groups["lora_head_no_decay"]["params"])
    assert groups["lora_head_no_decay"]["weight_decay"] == 0.0
    in_groups = {id(p) for g in optimizer.param_groups for p in g["params"]}
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert in_groups == trainable  # every trainable parameter once, nothing frozen
    pyra_params = {id(p) for n, p in model.named_parameters() if parameter_kind(n) == "pyra"}
    assert pyra_params == {id(p) for p in groups["pyra"]["params"]} and len(pyra_params) == 3 * 4
    assert optimizer.defaults["eps"] == 1e-8


def test_separate_pyra_lr_takes_effect():
    records = coloured_squares(per_class=2)
    runs = []
    for pyra_lr in (1e-3, 1e-2):
        model = build_model(tiny_run_config())
        start = trainable_copy(model)
        result = train(model, dataset_for(model, records), TrainConfig(epochs=1, batch_size=6, pyra_lr=pyra_lr))
        assert result.steps == 1 and result.history[0]["pyra_lr"] == pyra_lr
        runs.append((start, trainable_copy(model)))
    (start_a, end_a), (start_b, end_b) = runs
    for name in end_a:
        assert torch.equal(start_a[name], start_b[name])
        if parameter_kind(name) == "pyra":
            continue
        assert torch.equal(end_a[name], end_b[name]), name  # LoRA and head: identical step
    w_d = "blocks.0.pyra.w_d"
    delta_a, delta_b = end_a[w_d] - start_a[w_d], end_b[w_d] - start_b[w_d]
    assert delta_a.abs().max() > 0
    torch.testing.assert_close(delta_b, 10 * delta_a, rtol=1e-4, atol=0)  # Adam's step scales with the lr


# ---------------------------------------------------------------- the loop


def test_training_on_coloured_squares_lowers_the_loss(model):
    records = coloured_squares()
    reports = []
    config = TrainConfig(epochs=4, batch_size=6)  # the default lr
    result = train(model, dataset_for(model, records), config, val_set=dataset_for(model, records),
                   on_progress=reports.append)
    assert result.status == "completed", result.message
    assert result.steps == 12 and len(result.epochs) == 4
    assert result.epochs[0]["train_loss"] > result.epochs[-1]["train_loss"]
    assert [r.step for r in reports if r.val_accuracy is None] == list(range(1, 13))
    assert [r.step for r in reports if r.val_accuracy is not None] == [3, 6, 9, 12]
    assert reports[-1].fraction == 1.0 and reports[-1].eta_s == 0.0
    assert result.val_accuracy == result.epochs[-1]["val_accuracy"] > 1 / 3
    assert not model.training


def test_cancel_stops_at_the_step_it_was_set(model):
    cancel = threading.Event()

    def on_progress(progress):
        if progress.step == 2:
            cancel.set()

    records = coloured_squares()
    result = train(model, dataset_for(model, records), TrainConfig(epochs=2, batch_size=6),
                   on_progress=on_progress, cancel=cancel)
    assert result.status == "cancelled" and result.steps == 2
    assert not model.training
    logits = model(torch.randn(2, 3, 32, 32))
    assert logits.shape == (2, 3) and torch.isfinite(logits).all()


def test_non_finite_loss_stops_before_the_update_and_restores_weights(model):
    good = {}

    def poison(progress):
        if progress.step == 1:
            good.update(trainable_copy(model))
            with torch.no_grad():
                model.blocks[0].attn.qkv.lora_b.fill_(float("nan"))

    records = coloured_squares()
    result = train(model, dataset_for(model, records), TrainConfig(epochs=2, batch_size=6), on_progress=poison)
    assert result.status == "diverged" and result.steps == 1
    assert "step 2" in result.message
    restored = trainable_copy(model)
    assert all(torch.equal(restored[n], good[n]) for n in good)
    assert all(torch.isfinite(t).all() for t in restored.values())
    assert not model.training


def test_predict_returns_aligned_arrays_and_restores_mode(model):
    records = coloured_squares(per_class=2)
    model.train()
    predictions = predict(model, dataset_for(model, records), batch_size=4, with_features=True)
    assert model.training
    assert predictions.labels.tolist() == [r.label for r in records]
    assert predictions.probabilities.shape == (6, 3) and predictions.probabilities.dtype == np.float32
    np.testing.assert_allclose(predictions.probabilities.sum(axis=1), 1.0, rtol=1e-5)
    assert predictions.features.shape == (6, model.num_features)
    assert predictions.predicted.dtype == np.int64
    assert predictions.accuracy == predictions.correct.mean()


def test_a_huge_learning_rate_diverges_cleanly(model):
    records = coloured_squares()
    config = TrainConfig(epochs=1, batch_size=6, lr=1e6, pyra_lr=1e6, grad_clip=None)
    result = train(model, dataset_for(model, records), config)
    assert result.status == "diverged" and "Lower lr" in result.message
    assert all(torch.isfinite(t).all() for t in trainable_copy(model).values())
    assert torch.isfinite(model(torch.randn(1, 3, 32, 32))).all()


@pytest.mark.parametrize("method, mode", [("pyra", "sandwich"), ("pyra", "sandwich-labels"), ("none", "off")])
def test_micro_batches_train_as_the_whole_batch(method, mode):
    """Batches of 9 in passes of at most 4 (4 + 4 + 1): every loss and weight as with whole batches
    (cross-entropy is a mean, so each pass is weighted by its share of the batch), and no forward pass
    of the run (head start, steps, validation) sees more than 4 images. The weights agree to float
    rounding, not bit for bit: another batch shape rounds the matmuls differently, and on these
    near-uniform images that can move a near-tie in the merge's matching."""
    records = coloured_squares()  # 18 images: two batches of 9 per epoch
    trained, losses, widest = [], [], []
    for micro_batch in (None, 4):
        model = build_model(tiny_run_config(method=method, schedule=(1, 1, 1) + (0,) * 9 if method != "none"
                                            else (0,) * 12))
        sizes: list[int] = []
        model.patch_embed.register_forward_pre_hook(lambda module, args, seen=sizes: seen.append(args[0].shape[0]))
        config = TrainConfig(epochs=2, batch_size=9, micro_batch=micro_batch, elastic=mode, seed=3)
        result = train(model, dataset_for(model, records), config, val_set=dataset_for(model, records))
        assert result.status == "completed" and result.steps == 4
        trained.append(trainable_copy(model))
        losses.append([record["loss"] for record in result.history])
        widest.append(max(sizes))
    assert widest == [9, 4]
    np.testing.assert_allclose(losses[1], losses[0], rtol=1e-5)
    assert trained[0].keys() == trained[1].keys()
    for name, whole in trained[0].items():
        torch.testing.assert_close(trained[1][name], whole, atol=1e-4, rtol=1e-3, msg=name)


def test_a_micro_batch_must_be_a_whole_number():
    assert TrainConfig(batch_size=16, micro_batch=40).forward_batch == 16
    assert TrainConfig(batch_size=16, micro_batch=5).forward_batch == 5
    with pytest.raises(ValueError, match="micro_batch must be a whole number >= 1"):
        TrainConfig(micro_batch=0)


class _CancelsAfter(torch.utils.data.Dataset):
    """`dataset`, setting `cancel` once more than `after` items have been read (as a timer going off would)."""

    def __init__(self, dataset: ImageDataset, cancel: threading.Event, after: int) -> None:
        self.dataset, self.cancel, self.after, self.read = dataset, cancel, after, 0

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        self.read += 1
        if self.read > self.after:
            self.cancel.set()
        return self.dataset[index]


def test_a_cancel_during_the_head_start_stops_before_any_step(model):
    cancel = threading.Event()
    train_set = _CancelsAfter(dataset_for(model, coloured_squares()), cancel, after=3)  # inside the first batch
    before = trainable_copy(model)
    result = train(model, train_set, TrainConfig(epochs=2, batch_size=2), cancel=cancel)
    assert result.status == "cancelled" and result.steps == 0 and result.head_start is None
    assert "after 0 of 18 steps" in result.message
    assert all(torch.equal(before[name], value) for name, value in trainable_copy(model).items())
    assert train_set.read <= 4 + 2  # stopped before the batch after the one that set it


def test_a_cancel_during_validation_ends_the_run_as_cancelled(model):
    cancel = threading.Event()
    records = coloured_squares()
    val_set = _CancelsAfter(dataset_for(model, records), cancel, after=1)
    result = train(model, dataset_for(model, records), TrainConfig(epochs=3, batch_size=9, head_start=False),
                   val_set=val_set, cancel=cancel)
    assert result.status == "cancelled" and result.steps == 2  # the first epoch's steps, then its validation
    assert result.epochs[0]["val_accuracy"] is None
