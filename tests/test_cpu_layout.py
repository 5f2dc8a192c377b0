"""Column-major linear weights: the same model, only its memory order changed."""
from __future__ import annotations

import torch
from conftest import image_batch, make_tiny

from pyra.method.lora import add_lora, merge_lora
from pyra.method.patch import patch
from pyra.run.cpu_layout import column_major_linears


def test_column_major_weights_keep_values_parameters_and_logits() -> None:
    model = patch(make_tiny("vit_small_patch14_dinov2"), "pyra", [2, 2, 1, 1])
    images = image_batch(model, batch=3)
    with torch.no_grad():
        expected = model(images)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    parameters = {name: id(p) for name, p in model.named_parameters()}
    assert column_major_linears(model) is model
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert linears and all(m.weight.stride() == (1, m.weight.shape[0]) for m in linears)  # [out, in], column-major
    assert all(torch.equal(p, before[name]) and id(p) == parameters[name] for name, p in model.named_parameters())
    with torch.no_grad():
        torch.testing.assert_close(model(images), expected, rtol=1e-5, atol=1e-5)
    column_major_linears(model)  # a second call changes nothing
    assert all(m.weight.stride() == (1, m.weight.shape[0]) for m in linears)
    assert all(torch.equal(p, before[name]) for name, p in model.named_parameters())


def test_lora_merged_into_column_major_weights_gives_the_same_logits() -> None:
    """merge_lora adds into the weights in place: the order it finds them in does not matter."""
    model = add_lora(make_tiny("vit_tiny_patch16_224"), rank=2)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora" in name:
                p.normal_(0, 0.1)
    images = image_batch(model)
    with torch.no_grad():
        expected = model(images)
        laid_out = merge_lora(column_major_linears(model))
        torch.testing.assert_close(laid_out(images), expected, rtol=1e-5, atol=1e-5)
