"""Run folders: exact round trip, adapter holds only trained tensors, refuses bad or foreign files."""
from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import pyra
from pyra.method.parameters import parameter_kind
from pyra.run import checkpoint
from pyra.run.checkpoint import load_config, load_metrics, load_run, save_run
from pyra.run.run_config import CheckpointError, RunConfig, build_model
from pyra.run.train import TrainConfig

FILES = {"config.json", "adapter.safetensors", "metrics.json"}


@pytest.fixture
def config() -> RunConfig:
    """Random-init ViT-Tiny at 32 px (4 patches + class token); schedule 1 resolves to 1 token in blocks 0-2.

    "random:NAME" builds seeded random weights, so a saved run reloads exactly without a model hub."""
    return RunConfig(backbone="random:vit_tiny_patch16_224", img_size=32, num_classes=3, classes=("a", "b", "c"),
                     schedule=(1, 1, 1) + (0,) * 9, method="pyra", lora_rank=4, lora_targets=("qkv", "fc2"),
                     train=TrainConfig(epochs=2, pyra_lr=3e-4), data_source="sample:test", seed=3)


@pytest.fixture
def trained(config) -> torch.nn.Module:
    """A model whose LoRA B, PYRA w_d and head are no longer at their initial values."""
    model = build_model(config)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if parameter_kind(name) != "backbone":
                param.add_(torch.randn(param.shape, generator=generator) * 0.05)
    return model.eval()


def inputs() -> torch.Tensor:
    return torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def save(tmp_path: Path, model, config) -> Path:
    run_dir = tmp_path / "runs" / "one"
    save_run(run_dir, model, config, metrics={"accuracy": np.float32(0.5), "per_class": np.array([1, 0, 1])})
    return run_dir


def test_build_model_is_reproducible_and_keeps_the_resolved_schedule(config):
    first = build_model(config)
    second = build_model(replace(config, backbone="vit_tiny_patch16_224"), pretrained=False)  # same random init
    assert first.merge_config.schedule == config.schedule
    assert pyra.resolve_schedule(1, pyra.geometry(first)) == list(config.schedule)
    assert first.backbone_fingerprint == second.backbone_fingerprint
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), second.state_dict().values()))


def test_round_trip_gives_identical_logits(tmp_path, config, trained):
    expected = trained(inputs())
    run_dir = save(tmp_path, trained, config)
    model, loaded = load_run(run_dir)
    assert not model.training
    assert torch.equal(model(inputs()), expected)
    assert loaded == RunConfig.from_dict(json.loads((run_dir / "config.json").read_text()))
    assert loaded.backbone_fingerprint == trained.backbone_fingerprint
    assert loaded.train == config.train and loaded.classes == ("a", "b", "c")
    assert set(loaded.versions) == {"torch", "timm", "pyra"}
    assert load_metrics(run_dir) == {"accuracy": 0.5, "per_class": [1, 0, 1]}


def test_run_dir_holds_three_files_and_nothing_else_is_written(tmp_path, config, trained):
    (tmp_path / "before.txt").write_text("x")
    run_dir = save(tmp_path, trained, config)
    save_run(run_dir, trained, config)  # overwriting leaves no temp files either
    assert load_metrics(run_dir)["accuracy"] == 0.5  # metrics=None keeps the existing metrics
    written = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert written == sorted(["before.txt"] + [f"runs/one/{name}" for name in FILES])


def test_adapter_holds_only_lora_pyra_and_head_tensors(tmp_path, config, trained):
    adapter = load_file(save(tmp_path, trained, config) / "adapter.safetensors")
    kinds = {parameter_kind(key) for key in adapter}
    assert kinds == {"lora", "pyra", "head"}
    trainable = {n for n, p in trained.named_parameters() if p.requires_grad}
    assert set(adapter) == trainable
    assert sum(t.numel() for t in adapter.values()) == pyra.parameter_report(trained).trainable


def test_saving_a_merged_model_stores_the_same_adapter(tmp_path, config, trained):
    unmerged = load_file(save(tmp_path / "u", trained, config) / "adapter.safetensors")
    expected = trained(inputs())
    pyra.merge_lora(trained)
    merged = load_file(save(tmp_path / "m", trained, config) / "adapter.safetensors")
    assert unmerged.keys() == merged.keys() and all(torch.equal(unmerged[k], merged[k]) for k in unmerged)
    model, _ = load_run(tmp_path / "m" / "runs" / "one")
    torch.testing.assert_close(model(inputs()), expected, atol=1e-5, rtol=1e-5)


def test_a_pickle_named_safetensors_is_refused(tmp_path, config, trained):
    run_dir = save(tmp_path, trained, config)
    torch.save(checkpoint.adapter_state(trained), run_dir / "adapter.safetensors")
    with pytest.raises(CheckpointError, match="not a valid safetensors file"):
        load_run(run_dir)


def test_a_different_backbone_is_refused(tmp_path, config, trained):
    run_dir = save(tmp_path, trained, config)
    data = json.loads((run_dir / "config.json").read_text())
    data["backbone_fingerprint"] = "0123456789abcdef"  # as if trained on other weights of the same shapes
    (run_dir / "config.json").write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match="different backbone"):
        load_run(run_dir)
    model, _ = load_run(run_dir, check_fingerprint=False)
    assert model(inputs()).shape == (4, 3)


@pytest.mark.parametrize("content, match", [
    ("{not json", "not valid JSON"),
    ('["a list"]', "JSON object"),
    ("UNKNOWN_KEY", "unknown keys \\['colour'\\]"),
    ("MISSING_KEY", "missing keys \\['prop_attn'\\]"),  # even a key with a default
    ("BAD_VALUE", "lora_rank"),
    ("BAD_TRAIN", "train: unknown keys"),
])
def test_a_bad_config_json_is_refused_by_name(tmp_path, config, trained, content, match):
    run_dir = save(tmp_path, trained, config)
    data = json.loads((run_dir / "config.json").read_text())
    edits = {
        "UNKNOWN_KEY": lambda d: d.update(colour="red"),
        "MISSING_KEY": lambda d: d.pop("prop_attn"),
        "BAD_VALUE": lambda d: d.update(lora_rank=0),
        "BAD_TRAIN": lambda d: d["train"].update(learning_rate=1.0),
    }
    if content in edits:
        edits[content](data)
        content = json.dumps(data)
    (run_dir / "config.json").write_text(content)
    with pytest.raises(CheckpointError, match="config.json") as error:
        load_run(run_dir)
    assert error.match(match)


def test_a_run_saved_before_micro_batches_existed_still_loads(tmp_path, config, trained):
    """Its train config has no micro_batch: it trained on whole batches, and loads as such; a missing
    key that changes the model's outputs is still refused (above)."""
    run_dir = save(tmp_path, trained, config)
    data = json.loads((run_dir / "config.json").read_text())
    assert data["train"].pop("micro_batch") is None
    (run_dir / "config.json").write_text(json.dumps(data))
    model, loaded = load_run(run_dir)
    assert loaded.train.micro_batch is None and loaded.train == config.train
    torch.testing.assert_close(model(inputs()), load_run(save(tmp_path / "again", trained, config))[0](inputs()))
    data["train"].pop("lr")
    (run_dir / "config.json").write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match=r"train: missing keys \['lr'\]"):
        load_run(run_dir)


def test_missing_files_are_reported(tmp_path, config, trained):
    with pytest.raises(CheckpointError, match="config.json: not found"):
        load_config(tmp_path)
    run_dir = save(tmp_path, trained, config)
    (run_dir / "adapter.safetensors").unlink()
    with pytest.raises(CheckpointError, match="adapter.safetensors: not found"):
        load_run(run_dir)


def test_an_adapter_that_does_not_fit_is_refused_by_key(tmp_path, config, trained):
    run_dir = save(tmp_path, trained, config)
    adapter = load_file(run_dir / "adapter.safetensors")
    adapter.pop("blocks.1.pyra.w_d")
    adapter["head.weight"] = torch.zeros(5, 192)
    adapter["blocks.0.attn.qkv.base.weight"] = torch.zeros(576, 192)
    save_file(adapter, run_dir / "adapter.safetensors")
    with pytest.raises(CheckpointError) as error:
        load_run(run_dir)
    message = str(error.value)
    assert "missing ['blocks.1.pyra.w_d']" in message and "head.weight (5, 192)" in message
    assert "unexpected ['blocks.0.attn.qkv.base.weight']" in message  # a frozen backbone tensor


def test_a_failed_write_leaves_the_old_file_and_no_temp_file(tmp_path, config, trained, monkeypatch):
    run_dir = save(tmp_path, trained, config)
    before = (run_dir / "metrics.json").read_bytes()

    def failing_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        save_run(run_dir, trained, config, metrics={"accuracy": 0.9})
    assert (run_dir / "metrics.json").read_bytes() == before
    assert {p.name for p in run_dir.iterdir()} == FILES


def test_run_config_round_trips_through_json_and_validates(config):
    assert RunConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    with pytest.raises(ValueError, match="class names"):
        RunConfig(backbone="default", img_size=112, num_classes=3, classes=("a", "b"), schedule=(0,) * 12)
    with pytest.raises(ValueError, match="method"):
        RunConfig(backbone="default", img_size=112, num_classes=2, classes=("a", "b"), schedule=(0,) * 12,
                  method="fast")


def test_save_refuses_a_config_from_another_backbone(tmp_path, config, trained):
    with pytest.raises(ValueError, match="differs from the model's"):
        save_run(tmp_path / "run", trained, replace(config, backbone_fingerprint="0123456789abcdef"))
    assert not (tmp_path / "run").exists()
