"""Schedules: reference lists, token counts, and FLOPs against torch's own counter."""
from __future__ import annotations

import pytest
import timm
import torch
from conftest import image_batch, make_tiny
from torch.utils.flop_counter import FlopCounterMode

import pyra
from pyra.method.schedule import (
    flops_ratio,
    inflection_schedule,
    named_target_ratio,
    parse_schedule,
    resolve_schedule,
    tokens_per_layer,
    vit_b16_geometry,
)

VIT_B_LOW = [16] * 11 + [10]
VIT_B_HIGH = [40, 34, 30, 24, 18, 14, 10, 8, 4, 4, 3, 3]
VIT_L_LOW = [8] * 23 + [6]
VIT_L_HIGH = [20, 19, 18, 17, 15, 13, 13, 12, 10, 9, 8, 6, 6, 4, 4, 4, 3, 3, 2, 2, 1, 1, 1, 1]


def _meta_geometry(name: str, **kwargs) -> pyra.method.schedule.VitGeometry:
    with torch.device("meta"):
        return pyra.geometry(timm.create_model(name, pretrained=False, **kwargs))


def test_named_schedules_match_the_reference_lists():
    vit_b = _meta_geometry("vit_base_patch16_224")
    vit_l = _meta_geometry("vit_large_patch16_224")
    assert resolve_schedule("low", vit_b) == VIT_B_LOW
    assert resolve_schedule("high", vit_b) == VIT_B_HIGH
    assert resolve_schedule("low", vit_l) == VIT_L_LOW
    assert resolve_schedule("high", vit_l) == VIT_L_HIGH


def test_reference_flops_ratios_are_about_2_and_3_5():
    assert named_target_ratio("low") == pytest.approx(2.0, abs=0.05)
    assert named_target_ratio("high") == pytest.approx(3.46, abs=0.05)


def test_derived_named_schedules_have_the_reference_shape():
    geometry = _meta_geometry("vit_small_patch14_dinov2", img_size=112)  # 65 tokens, 12 layers
    low, high = resolve_schedule("low", geometry), resolve_schedule("high", geometry)
    assert max(low) - min(low) <= 1  # near-constant
    assert high == sorted(high, reverse=True) and high[0] > 2 * high[-1]  # front-loaded
    assert flops_ratio(low, geometry) == pytest.approx(named_target_ratio("low"), rel=0.1)
    assert flops_ratio(high, geometry) == pytest.approx(named_target_ratio("high"), rel=0.1)


def test_tokens_per_layer_and_capping():
    geometry = vit_b16_geometry()
    assert tokens_per_layer(VIT_B_HIGH, geometry) == [197, 157, 123, 93, 69, 51, 37, 27, 19, 15, 11, 8, 5]
    tiny = _meta_geometry("vit_tiny_patch16_224", img_size=64)  # 16 patches + class token
    assert resolve_schedule(100, tiny) == [8, 4, 2, 1] + [0] * 8  # 17, 9, 5, 3, 2 tokens: r <= (N - 1) // 2
    assert tokens_per_layer(resolve_schedule(100, tiny), tiny)[-1] == 1 + 1


def test_target_ratio_and_inflection_forms():
    geometry = vit_b16_geometry()
    assert flops_ratio(resolve_schedule(2.0, geometry), geometry) == pytest.approx(2.0, rel=0.05)
    assert resolve_schedule(1.0, geometry) == [0] * 12
    assert inflection_schedule(8, 0.0, 12) == [8] * 12
    decreasing = inflection_schedule(8, -0.5, 12)
    assert decreasing[0] == 12 and decreasing[-1] == 4 and decreasing == sorted(decreasing, reverse=True)


@pytest.mark.parametrize("bad", [-1, [1, 2], 0.5, "medium", True, [1.5] * 12])
def test_bad_schedules_are_refused(bad):
    with pytest.raises(ValueError):
        resolve_schedule(bad, vit_b16_geometry())


def test_parse_schedule_text():
    assert parse_schedule("low") == "low"
    assert parse_schedule("8") == 8
    assert parse_schedule("8,4,2") == [8, 4, 2]
    assert parse_schedule("[8, 4]") == [8, 4]
    assert parse_schedule("2.5") == 2.5
    assert parse_schedule("8@-0.5") == (8, -0.5)
    with pytest.raises(ValueError, match="cannot read schedule"):
        parse_schedule("fast")


def _counted_flops(model: torch.nn.Module, x: torch.Tensor) -> int:
    for block in model.blocks:
        block.attn.fused_attn = False  # FlopCounterMode does not see the fused CPU kernel
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    return counter.get_total_flops()


@pytest.mark.parametrize("method", ["tome", "pyra"])
@pytest.mark.parametrize("key", ["vit_tiny_patch16_224", "deit_tiny_distilled_patch16_224", "vit_small_patch14_reg4_dinov2"])
def test_flops_count_matches_torch_flop_counter(key, method):
    model = make_tiny(key)
    pyra.add_lora(model, rank=4, targets=("qkv", "fc1"))
    x = image_batch(model, batch=1)
    assert pyra.schedule_flops(model, 0, method="none") == _counted_flops(model, x)
    pyra.patch(model, method, "high")
    assert pyra.schedule_flops(model, "high") == _counted_flops(model, x)
    pyra.merge_lora(model)  # merged LoRA costs nothing
    assert pyra.schedule_flops(model, "high") == _counted_flops(model, x)
