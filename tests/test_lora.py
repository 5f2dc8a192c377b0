"""LoRA: starts as the identity, merges and unmerges exactly, reports its parameters."""
from __future__ import annotations

import pytest
import torch
from conftest import image_batch, make_tiny

import pyra
from pyra.method.lora import lora_layers


def _randomise_lora(model: torch.nn.Module) -> None:
    with torch.no_grad():
        for layer in lora_layers(model):
            layer.lora_b.normal_(0, 0.05)


def test_lora_starts_as_the_base_model():
    model = make_tiny("vit_tiny_patch16_224")
    x = image_batch(model)
    expected = model(x)
    pyra.add_lora(model, rank=4, targets=("qkv", "proj", "fc1", "fc2"))
    assert all(layer.lora_b.abs().sum() == 0 for layer in lora_layers(model))
    torch.testing.assert_close(model(x), expected, atol=0, rtol=0)


@pytest.mark.parametrize("patched", [False, True])
def test_merge_then_unmerge_restores_weights_and_outputs(patched):
    model = make_tiny("vit_small_patch14_dinov2")
    original = {name: p.detach().clone() for name, p in model.named_parameters()}
    pyra.add_lora(model, rank=4, alpha=8, targets=("qkv", "fc2"))
    _randomise_lora(model)
    if patched:
        pyra.patch(model, "pyra", 3)
    x = image_batch(model)
    unmerged_out = model(x)
    pyra.merge_lora(model)
    torch.testing.assert_close(model(x), unmerged_out, atol=1e-5, rtol=1e-4)
    assert not torch.equal(model.blocks[0].attn.qkv.base.weight, original["blocks.0.attn.qkv.weight"])
    pyra.unmerge_lora(model)
    for layer_name, layer in [(n, m) for n, m in model.named_modules() if isinstance(m, pyra.LoRALinear)]:
        torch.testing.assert_close(layer.base.weight, original[f"{layer_name}.weight"], atol=1e-6, rtol=0)
    torch.testing.assert_close(model(x), unmerged_out, atol=1e-5, rtol=1e-4)


def test_merge_refuses_non_finite_update():
    model = make_tiny("vit_tiny_patch16_224")
    pyra.add_lora(model, rank=2)
    with torch.no_grad():
        model.blocks[0].attn.qkv.lora_b[0, 0] = float("nan")
        model.blocks[0].attn.qkv.lora_b[1, 0] = 1.0
    with pytest.raises(ValueError, match="non-finite"):
        pyra.merge_lora(model)


def test_add_lora_validates_its_arguments():
    with pytest.raises(ValueError, match="targets"):
        pyra.add_lora(make_tiny("vit_tiny_patch16_224"), targets=("attn",))
    with pytest.raises(ValueError, match="rank"):
        pyra.add_lora(make_tiny("vit_tiny_patch16_224"), rank=0)
    model = pyra.add_lora(make_tiny("vit_tiny_patch16_224"))
    with pytest.raises(ValueError, match="twice"):
        pyra.add_lora(model)


def test_parameter_report_counts_each_kind():
    model = make_tiny("vit_tiny_patch16_224", num_classes=7)
    backbone = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("head"))
    pyra.add_lora(model, rank=4)
    pyra.patch(model, "pyra", [1] * 12)  # 17 tokens: no layer is capped
    report = pyra.parameter_report(model)
    dim, depth = 192, 12
    assert report.lora == depth * 4 * (dim + 3 * dim)
    assert report.pyra == depth * (1 + dim + 2 * dim)  # w_r (1, 1), w_d (1, D), LayerNorm
    assert report.head == dim * 7 + 7
    assert report.backbone == backbone
    assert report.trainable == report.lora + report.pyra + report.head
    assert report.percent_of_backbone == pytest.approx(100 * report.trainable / backbone)
