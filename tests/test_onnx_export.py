"""ONNX export: the exported file, run in onnxruntime, gives the torch model's logits."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import torch
from conftest import image_batch, make_tiny

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


def test_tome_with_a_dynamic_batch_exports_exactly(tmp_path: Path) -> None:
    check_export("vit_tiny_patch16_224", "tome", [2] * 12, tmp_path, dynamic_batch=True)


def test_the_timing_of_an_export_runs_its_bounded_rounds_in_both_runtimes(tmp_path: Path, monkeypatch) -> None:
    """At least MIN_ROUNDS rounds however long they take, at most MAX_ROUNDS however short; each round runs both
    runtimes once on the export's batch."""
    import onnx
    from onnx import TensorProto, helper

    import pyra.run.onnx_speed as onnx_speed

    model = make_tiny("vit_tiny_patch16_224")
    size = model.patch_embed.img_size[0]
    graph = helper.make_graph(  # any file taking the model's images will do: only the timing is under test
        [helper.make_node("ReduceMean", ["image"], ["logits"], axes=[2, 3], keepdims=0)], "mean",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [2, 3, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [2, 3])])
    path = tmp_path / "model.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    calls = {"torch": 0}
    forward = model.forward
    monkeypatch.setattr(model, "forward", lambda images: calls.__setitem__("torch", calls["torch"] + 1) or forward(images))
    monkeypatch.setattr(onnx_speed, "TIME_BUDGET_S", 0.0)
    fewest = onnx_speed.measure_export_speed(model, path, batch=2)
    assert fewest.rounds == onnx_speed.MIN_ROUNDS and calls["torch"] == onnx_speed.MIN_ROUNDS + 1  # + warm-up
    monkeypatch.setattr(onnx_speed, "TIME_BUDGET_S", 1e9)
    most = onnx_speed.measure_export_speed(model, path, batch=2)
    assert most.rounds == onnx_speed.MAX_ROUNDS and most.batch == 2 and most.threads == torch.get_num_threads()
    assert most.speedup == most.torch_ms.median / most.onnxruntime_ms.median
    assert most.describe().startswith("A batch of 2: ") and "ms in onnxruntime" in most.describe()


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
    assert "Speed on this server.** One image: " in summary and "ms in onnxruntime" in summary
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


def test_an_export_that_ranks_tokens_otherwise_is_refused(tmp_path: Path, monkeypatch) -> None:
    """An exported graph that merges the least similar tokens first is caught by the matching check (it would
    also change the logits) and nothing is written."""
    import pyra.method.merge as merge

    split = merge._split_by_score
    monkeypatch.setattr(merge, "_split_by_score",
                        lambda score, r: split(-score if torch.compiler.is_exporting() else score, r))
    model = make_tiny("vit_tiny_patch16_224")
    patch(model, method="tome", schedule=[4] * 12)
    with pytest.raises(ValueError, match="not the most similar"):
        export_model(model, tmp_path / "model.onnx", classes=list("abcde"), batch=2)
    assert not (tmp_path / "model.onnx").exists()


def test_an_export_whose_merge_computes_otherwise_is_refused(tmp_path: Path, monkeypatch) -> None:
    """Merges that choose the right tokens but average them wrongly in the graph: the logits, compared with the
    same merges, catch it."""
    import pyra.method.patch as patched

    weighted = patched.merge_weighted

    def off_by_a_little(matching, x, size, modulate=None):
        out, new_size = weighted(matching, x, size, modulate)
        return (out * 1.01 if torch.compiler.is_exporting() else out), new_size

    monkeypatch.setattr(patched, "merge_weighted", off_by_a_little)
    model = make_tiny("vit_tiny_patch16_224")
    patch(model, method="pyra", schedule=[4] * 12)
    _randomise_gates(model)
    with pytest.raises(ValueError, match="with the same merges"):
        export_model(model, tmp_path / "model.onnx", classes=list("abcde"), batch=2)
    assert not (tmp_path / "model.onnx").exists()


def test_the_check_counts_images_merged_otherwise_and_compares_them_with_the_same_merges(monkeypatch) -> None:
    """Runtime outputs made by torch itself with image 1's first matching reversed: with a tie tolerance that
    admits the reversal, only image 1 is counted, the logits agree with the same merges, and its difference
    from torch's own merges is reported; with the real tolerance the reversal is refused."""
    from pyra.method.merge import Matching
    from pyra.method.patch import replaying
    from pyra.run import onnx_check

    model = make_tiny("vit_tiny_patch16_224")
    patch(model, method="pyra", schedule=[4] * 12)
    _randomise_gates(model)
    images = image_batch(model, batch=2)
    with torch.no_grad():
        own = model(images)
        matchings = [m for _, m in model.merge_state.matchings]
    first = matchings[0]
    reversed_src, reversed_dst = first.src_idx.clone(), first.dst_idx.clone()
    reversed_src[1], reversed_dst[1] = first.src_idx[1].flip(0), first.dst_idx[1].flip(0)
    matchings[0] = Matching(reversed_src, reversed_dst, first.unm_idx, first.scores, first.num_protected)
    with torch.no_grad(), replaying(model, matchings):
        runtime = model(images)
    outputs = [runtime.numpy()] + [t.numpy() for m in matchings for t in (m.src_idx, m.dst_idx, m.unm_idx, m.scores)]
    strict = onnx_check.check_outputs(model, images, outputs)
    assert strict.near_tie_images == 1 and "not the most similar" in strict.problem()
    monkeypatch.setattr(onnx_check, "TIE_TOLERANCE", 10.0)
    check = onnx_check.check_outputs(model, images, outputs)
    assert check.problem() is None and check.check_images == 2 and check.near_tie_images == 1
    assert check.max_abs_difference == 0.0 and check.max_shortfall == strict.max_shortfall > 0
    assert check.near_tie_max_abs_difference == pytest.approx(float((runtime[1] - own[1]).abs().max()))
    assert check.near_tie_max_abs_difference > 1e-3 and torch.equal(runtime[0], own[0])
    assert "On 1 of them" in check.describe()


@pytest.mark.slow
def test_the_default_backbone_at_336_px_exports_where_near_ties_round_differently(tmp_path: Path) -> None:
    """The shipped DINOv2 at 336 px (577 tokens), PYRA at "high": its similarities tie to within float rounding
    on most images, which onnxruntime and torch can round differently. The export is written, and each check
    image either gives torch's logits or is counted as merged otherwise among near-ties."""
    from pyra.backbones.factory import create_backbone
    from pyra.run.onnx_check import TIE_TOLERANCE

    torch.manual_seed(0)
    model = patch(create_backbone("default", num_classes=5, img_size=336).eval(), "pyra", "high")
    _randomise_gates(model)
    info = export_model(model, tmp_path / "model.onnx", classes=list("abcde"), batch=1, check_images=3)
    check = info.check
    assert check.check_images == 3 and check.max_abs_difference <= 1e-4 and check.max_shortfall <= TIE_TOLERANCE
    images = torch.randn(3, 3, 336, 336, generator=torch.Generator().manual_seed(0))  # the check's own images
    with torch.no_grad():
        own = model(images).numpy()
    runtime = np.concatenate([runtime_logits(tmp_path / "model.onnx", images[i:i + 1]) for i in range(3)])
    per_image = np.abs(runtime - own).max(axis=1)
    assert int((per_image > 1e-4).sum()) <= check.near_tie_images
    assert check.near_tie_max_abs_difference == pytest.approx(float(per_image.max()), abs=1e-4)
