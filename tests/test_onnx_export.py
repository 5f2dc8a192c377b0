"""ONNX export: the exported file, run in onnxruntime, gives the torch model's logits."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import torch
from conftest import make_tiny

from pyra.method.patch import patch
from pyra.run.onnx_export import export_model, onnx_metadata


def _randomise_gates(model: torch.nn.Module) -> None:
    """PYRA's gates start as the identity; random weights make the modulation visible in the logits."""
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if ".pyra." in name:
                parameter.normal_(0, 0.5)


def runtime_logits(path: Path, images: torch.Tensor) -> np.ndarray:
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: images.numpy()})[0]


def check_export(key: str, method: str, schedule, tmp_path: Path, dynamic_batch: bool) -> None:
    model = make_tiny(key)
    patch(model, method=method, schedule=schedule)
    if method == "pyra":
        _randomise_gates(model)
    path = tmp_path / "model.onnx"
    info = export_model(model, path, classes=list("abcde"), batch=3, dynamic_batch=dynamic_batch)
    size = model.patch_embed.img_size[0]
    images = torch.randn(3 if not dynamic_batch else 5, 3, size, size, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        expected = model(images).numpy()
    assert np.abs(runtime_logits(path, images) - expected).max() <= 1e-4
    merged = model.merge_config.method != "none" and any(model.merge_config.schedule)
    with torch.no_grad():  # the merge matters: the same images without it give other logits
        patch(model, method="none", schedule=0)
        assert not merged or np.abs(model(images).numpy() - expected).max() > 1e-3
    meta = onnx_metadata(path)
    assert meta["classes"] == list("abcde") and meta["img_size"] == size and meta["schedule"] == info.schedule
    assert meta["batch"] == (None if dynamic_batch else 3) and len(meta["mean"]) == 3


def test_pyra_with_registers_exports_exactly(tmp_path: Path) -> None:
    check_export("vit_small_patch14_reg4_dinov2", "pyra", [3, 3, 2, 2], tmp_path, dynamic_batch=False)


def test_an_unmerged_model_exports_exactly(tmp_path: Path) -> None:
    check_export("vit_tiny_patch16_224", "none", 0, tmp_path, dynamic_batch=True)


def test_the_export_tab_exports_the_shipped_default_backbone_run(tmp_path, monkeypatch):
    """The Export tab on the worked example (the default DINOv2 backbone, its shipped weights, a trained PYRA
    run at its target): the .onnx it offers, fed as its metadata says, gives the torch model's logits."""
    from types import SimpleNamespace

    from pyra.method.patch import set_schedule
    from pyra.run.checkpoint import load_run
    from pyra_app import tab_export, tab_train
    from pyra_app.session import open_session

    monkeypatch.setenv("PYRA_WORK_ROOT", str(tmp_path / "work"))
    session = tab_train.open_worked_example(open_session(None, "export"), SimpleNamespace(session_hash="export"))
    target = len(session.result.levels) - 1
    path, summary = tab_export.export_onnx(session, "pyra@0", target)
    assert Path(path).parent == session.workdir / "exports" and path.endswith("-level3.onnx")
    assert "batch 1, PYRA merging" in summary and "within" in summary
    metadata = onnx_metadata(path)
    model, config = load_run(session.result.run_dirs["pyra@0"])
    set_schedule(model.eval(), list(session.result.levels[target].schedule))
    assert metadata["classes"] == list(config.classes) and metadata["img_size"] == config.img_size
    image = torch.rand(1, 3, config.img_size, config.img_size, generator=torch.Generator().manual_seed(3))
    mean, std = (torch.tensor(metadata[key])[:, None, None] for key in ("mean", "std"))
    with torch.no_grad():
        expected = model((image - mean) / std).numpy()
    assert np.abs(runtime_logits(Path(path), (image - mean) / std) - expected).max() <= 1e-4
    with pytest.raises(Exception, match="Choose the compression level"):
        tab_export.export_onnx(session, "pyra@0", 7)
