"""The merging patch against the invariants of DESIGN section 4."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import image_batch, make_tiny

import pyra
from pyra.method.patch import UnsupportedModelError


@pytest.mark.parametrize("with_lora", [False, True])
@pytest.mark.parametrize("method", ["none", "tome", "pyra"])
def test_r0_reproduces_unpatched_model(tiny_key, with_lora, method):
    model = make_tiny(tiny_key)
    if with_lora:
        pyra.add_lora(model, rank=4)
        with torch.no_grad():  # a non-zero update, so LoRA takes part in the comparison
            for layer in pyra.method.lora.lora_layers(model):
                layer.lora_b.normal_(0, 0.05)
    x = image_batch(model)
    expected = model(x)
    pyra.patch(model, method=method, schedule=0)
    torch.testing.assert_close(model(x), expected, atol=1e-5, rtol=0)


def test_merging_changes_output_and_token_count(tiny_key):
    model = make_tiny(tiny_key)
    x = image_batch(model)
    expected = model(x)
    pyra.patch(model, "tome", 4, trace_source=True)
    out = model(x)
    assert out.shape == expected.shape
    assert not torch.allclose(out, expected, atol=1e-4)
    geo = pyra.geometry(model)
    final_tokens = pyra.tokens_per_layer(model.merge_config.schedule, geo)[-1]
    assert pyra.token_sources(model)[-1].shape == (2, final_tokens, geo.num_tokens)


def test_pyra_at_init_equals_tome(tiny_key):
    model = make_tiny(tiny_key)
    x = image_batch(model)
    pyra.patch(model, "pyra", "high")
    pyra_out = model(x)
    pyra.set_schedule(model, "high", method="tome")
    torch.testing.assert_close(pyra_out, model(x), atol=0, rtol=0)


def test_pyra_gradients_reach_all_modulator_parameters():
    # average pooling: with class-token pooling the last layer's merge cannot reach the output
    model = make_tiny("vit_tiny_patch16_224@avg")
    pyra.add_lora(model, rank=4)
    pyra.patch(model, "pyra", 1)  # 16 tokens: one merge in each of the 12 layers
    with torch.no_grad():
        for block in model.blocks:
            block.pyra.w_d.normal_(0, 0.1)
    model.train()
    model(image_batch(model)).logsumexp(-1).sum().backward()
    for block in model.blocks:
        for name in ("w_r", "w_d", "norm.weight", "norm.bias"):
            grad = block.pyra.get_parameter(name).grad
            assert grad is not None and grad.abs().sum() > 0, f"layer {block.layer_index}: no gradient for {name}"


def test_only_lora_head_and_pyra_get_gradients():
    model = make_tiny("deit_tiny_distilled_patch16_224")
    pyra.add_lora(model, rank=4, targets=("qkv", "proj", "fc1", "fc2"))
    pyra.patch(model, "pyra", 6)
    model.train()
    model(image_batch(model)).sum().backward()
    for name, param in model.named_parameters():
        kind = pyra.method.parameters.parameter_kind(name)
        if kind == "backbone":
            assert param.grad is None, name
        else:
            assert param.requires_grad and param.grad is not None, name


def test_sizes_sum_to_input_tokens_and_sources_partition_inputs(tiny_key):
    model = make_tiny(tiny_key)
    pyra.patch(model, "pyra", "high", trace_source=True)
    model(image_batch(model, batch=3))
    records = pyra.layer_records(model)
    num_inputs = pyra.geometry(model).num_tokens
    assert len(records) == len(model.blocks)
    for record in records:
        torch.testing.assert_close(record.size.sum(dim=1).squeeze(-1), torch.full((3,), float(num_inputs)))
        source = record.source
        assert set(source.unique().tolist()) <= {0.0, 1.0}
        torch.testing.assert_close(source.sum(dim=1), torch.ones(3, num_inputs))  # each input in exactly one token
        torch.testing.assert_close(source.sum(dim=2, keepdim=True), record.size)  # size = inputs held


def test_prefix_tokens_are_never_merged_and_stay_in_front(tiny_key):
    model = make_tiny(tiny_key)
    pyra.patch(model, "tome", 100, trace_source=True)  # capped to the most each layer allows
    model(image_batch(model))
    num_prefix = model.num_prefix_tokens
    for source in pyra.token_sources(model):
        front = source[:, :num_prefix]
        torch.testing.assert_close(front[..., :num_prefix], torch.eye(num_prefix).expand(2, -1, -1))
        assert front[..., num_prefix:].sum() == 0
    assert pyra.token_sources(model)[-1].shape[1] <= num_prefix + 2


@pytest.mark.parametrize("key", ["vit_tiny_patch16_224", "vit_small_patch14_reg4_dinov2"])
def test_proportional_attention_sdpa_equals_explicit_softmax(key):
    model = make_tiny(key)
    x = image_batch(model)
    pyra.patch(model, "tome", 6, prop_attn=True)
    fused = model(x)
    for block in model.blocks:
        block.attn.fused_attn = False
    torch.testing.assert_close(model(x), fused, atol=1e-5, rtol=1e-4)
    pyra.set_schedule(model, 6)
    model.merge_config = pyra.MergeConfig("tome", model.merge_config.schedule, prop_attn=False)
    assert not torch.allclose(model(x), fused, atol=1e-4)  # the bias does change the result


def test_log_size_bias_matches_hand_written_attention():
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 7, 8) for _ in range(3))
    size = torch.randint(1, 5, (2, 7, 1)).float()
    bias = size.log().transpose(1, 2)[:, None]  # [B, 1, 1, N]
    weights = torch.softmax(q @ k.transpose(-2, -1) / 8**0.5 + size.log().view(2, 1, 1, 7), dim=-1)
    torch.testing.assert_close(F.scaled_dot_product_attention(q, k, v, attn_mask=bias), weights @ v)


def test_size_weighted_average_pooling():
    model = make_tiny("vit_tiny_patch16_224@avg")
    pyra.patch(model, "tome", 8)
    x = image_batch(model)
    features = model.forward_features(x)
    size = model.merge_state.size
    pooled = model.pool(features)
    torch.testing.assert_close(pooled, (features * size).sum(1) / size.sum(1))


def test_set_schedule_refuses_larger_r_than_pyra_was_trained_with():
    model = make_tiny("vit_tiny_patch16_224")
    pyra.patch(model, "pyra", 2)  # 17 tokens: [2, 2, 2, 2, 2, 2, 1, 1, 0, ...] after capping
    pyra.set_schedule(model, [1] * 6 + [0] * 6)  # smaller is fine: uses the first rows of w_r
    model(image_batch(model))
    with pytest.raises(ValueError, match="trained to merge at most 2"):
        pyra.set_schedule(model, 3)
    pyra.set_schedule(model, 3, method="tome")  # training-free ToMe may merge more
    model(image_batch(model))


def test_unsupported_models_are_refused_with_a_reason():
    import timm

    with pytest.raises(UnsupportedModelError, match="pools with 'map'"):
        pyra.patch(timm.create_model("vit_tiny_patch16_224", img_size=32, global_pool="map"), "tome", 2)
    with pytest.raises(UnsupportedModelError, match="not a timm VisionTransformer"):
        pyra.patch(torch.nn.Linear(2, 2), "tome", 2)
    with pytest.raises(UnsupportedModelError, match="patch dropout"):
        pyra.patch(timm.create_model("vit_tiny_patch16_224", img_size=32, patch_drop_rate=0.5), "tome", 2)
    with pytest.raises(ValueError, match="method must be one of"):
        pyra.patch(make_tiny("vit_tiny_patch16_224"), "fast", 2)


def test_bf16_autocast_runs_and_stays_close():
    model = make_tiny("vit_small_patch14_dinov2")
    pyra.add_lora(model, rank=4)
    pyra.patch(model, "pyra", "high")
    x = image_batch(model)
    reference = model(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
    assert torch.isfinite(out).all()
    assert (out.float() - reference).abs().max() < 0.1 * reference.abs().max()


def test_training_mode_drop_path_and_merging_backward():
    model = make_tiny("vit_tiny_patch16_224")
    model.blocks[1].drop_path1 = torch.nn.Identity()
    pyra.add_lora(model, rank=2, dropout=0.1)
    pyra.patch(model, "pyra", "low")
    model.train()
    loss = F.cross_entropy(model(image_batch(model, batch=4)), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    assert torch.isfinite(loss)
