"""Turn a timm VisionTransformer into a token-merging one (ToMe or PYRA), in place.

Blocks and attention layers get their class swapped for the subclasses below; the model
class is swapped for a merging subclass of itself (so DeiT's distilled head keeps working).
Everything that lasts one forward lives in a `MergeState` rebuilt at the start of each forward.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Iterator, Optional, Sequence

import torch
import torch.nn.functional as F
from timm.layers import Attention
from timm.models.vision_transformer import Block, VisionTransformer
from torch import Tensor, nn

from pyra.method.lora import LoRALinear
from pyra.method.merge import Matching, Modulate, bipartite_soft_matching, merge_source, merge_weighted
from pyra.method.modulation import TokenModulator, reactivate
from pyra.method.schedule import Method, ScheduleSpec, VitGeometry, check_method, forward_flops, resolve_schedule

_POOLS = ("token", "avg", "")


@dataclass(frozen=True)
class MergeConfig:
    """How a patched model merges; `schedule` is already capped, one r per block."""

    method: Method
    schedule: tuple[int, ...]
    prop_attn: bool = True  # add log(size) of each key to the attention logits
    trace_source: bool = False  # keep per-layer source maps (and matchings) for visualisation


@dataclass
class LayerRecord:
    """What one layer did, kept only when tracing: for token maps and the layer inspector."""

    source: Tensor  # [B, N_out, N_0] 0/1: input tokens held by each output token
    size: Tensor  # [B, N_out, 1]
    matching: Optional[Matching] = None
    channel_gate: Optional[Tensor] = None  # [B, 1, D] (PYRA only)
    token_gate: Optional[Tensor] = None  # [B, r, 1] (PYRA only)


@dataclass
class MergeState:
    """Per-forward state, indexed by layer, never consumed."""

    config: MergeConfig
    num_protected: int
    size: Optional[Tensor] = None  # [B, N, 1] input tokens each token stands for; None = all ones
    source: Optional[Tensor] = None  # [B, N, N_0], only when tracing
    layers: list[LayerRecord] = field(default_factory=list)
    replay: Optional[Sequence[Matching]] = None  # merge with these, one per merging layer, instead of matching
    matchings: list[tuple[Tensor, Matching]] = field(default_factory=list)  # (metric [B, N, Dh], matching) per merge

    def attention_bias(self, dtype: torch.dtype) -> Optional[Tensor]:
        """[B, 1, 1, N] log-size bias for proportional attention, or None when all sizes are 1."""
        if not self.config.prop_attn or self.size is None:
            return None
        batch, num_tokens, _ = self.size.shape
        return self.size.log().to(dtype).view(batch, 1, 1, num_tokens)

    def merges_at(self, layer: int) -> bool:
        return self.config.method != "none" and self.config.schedule[layer] > 0

    def merge(self, layer: int, x: Tensor, metric: Optional[Tensor], modulator: Optional[TokenModulator]) -> Tensor:
        """x: [B, N, D], metric: [B, N, Dh] (None when this layer does not merge) -> x with N - r tokens."""
        r = self.config.schedule[layer] if self.merges_at(layer) else 0
        matching = self._matching(metric, r) if r > 0 else None
        gates: list[Optional[Tensor]] = [None, None]  # channel, token gate (filled when tracing PYRA)
        if matching is not None and matching.r > 0:
            use_pyra = self.config.method == "pyra"
            if use_pyra and modulator is None:
                raise RuntimeError(f"layer {layer} merges {r} tokens but has no PYRA modulator")
            modulate = modulator if use_pyra else None
            if use_pyra and self.config.trace_source:
                modulate = self._recording(modulator, gates)
            if self.config.trace_source:
                self.source = merge_source(matching, self._current_source(x))
            x, self.size = merge_weighted(matching, x, self._sizes(x), modulate)
        if self.config.trace_source:
            self._record(x, matching, gates)
        return x

    def _matching(self, metric: Tensor, r: int) -> Matching:
        """This layer's matching: computed from `metric`, or the next replayed one."""
        if self.replay is None:
            matching = bipartite_soft_matching(metric, r, self.num_protected)
        else:
            matching = self.replay[len(self.matchings)]
        self.matchings.append((metric.detach(), matching))
        return matching

    def _current_source(self, x: Tensor) -> Tensor:
        """[B, N, N_0] map of the input tokens each token of x holds (the identity before any merge)."""
        if self.source is None:
            batch, num_tokens, _ = x.shape
            self.source = torch.eye(num_tokens, device=x.device)[None].expand(batch, -1, -1)
        return self.source

    @staticmethod
    def _recording(modulator: TokenModulator, out: list) -> Modulate:
        """`modulator` as a merge callback that also stores its gates in `out`."""

        def modulate(src: Tensor, dst: Tensor) -> Tensor:
            channel_gate, token_gate = modulator.gates(src, dst)
            out[0], out[1] = channel_gate.detach(), token_gate.detach()
            return reactivate(src, channel_gate, token_gate)

        return modulate

    def _sizes(self, x: Tensor) -> Tensor:
        """[B, N, 1] sizes of the tokens in x (all ones before the first merge)."""
        return self.size if self.size is not None else x.new_ones(x.shape[0], x.shape[1], 1, dtype=torch.float32)

    def _record(self, x: Tensor, matching: Optional[Matching], gates: list) -> None:
        self.layers.append(LayerRecord(self._current_source(x), self._sizes(x).detach(), matching, gates[0], gates[1]))


class MergingAttention(Attention):
    """timm Attention that also returns its keys averaged over heads (the merge metric).

    Modifications vs timm Attention.forward: returns (output, keys [B, N, head_dim] or None
    when `with_keys` is False) and casts a float attention mask to the query dtype. Fused SDPA, q/k-norm, the output norm
    and the output gate are kept as upstream.
    """

    def forward(
        self, x: Tensor, attn_mask: Optional[Tensor] = None, with_keys: bool = True
    ) -> tuple[Tensor, Optional[Tensor]]:
        B, N, _ = x.shape
        gate = self.gate(x).sigmoid() if getattr(self, "gate", None) is not None else None
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each [B, H, N, Dh]
        q, k = self.q_norm(q), self.k_norm(k)
        if attn_mask is not None:
            attn_mask = attn_mask.to(q.dtype)
        if self.fused_attn:
            x = F.scaled_dot_product_attention(
                q, k, v, attn_mask=attn_mask, dropout_p=self.attn_drop.p if self.training else 0.0
            )
        else:
            attn = (q * self.scale) @ k.transpose(-2, -1)  # [B, H, N, N]
            if attn_mask is not None:
                attn = attn + attn_mask
            x = self.attn_drop(attn.softmax(dim=-1)) @ v
        x = x.transpose(1, 2).reshape(B, N, self.attn_dim)
        x = self.norm(x)
        if gate is not None:
            x = x * gate
        x = self.proj_drop(self.proj(x))
        return x, k.mean(dim=1) if with_keys else None


class MergingBlock(Block):
    """timm Block that merges tokens between the attention residual and the MLP.

    Modifications vs timm Block.forward: takes the model's MergeState instead of a mask;
    passes the proportional-attention bias as the attention mask; merges r tokens (ToMe, or
    PYRA through `self.pyra`) after the attention residual. LayerScale and drop-path kept.
    """

    layer_index: int
    pyra: Optional[TokenModulator]

    def forward(self, x: Tensor, state: MergeState) -> Tensor:  # type: ignore[override]
        merges = state.merges_at(self.layer_index)
        attn_out, metric = self.attn(self.norm1(x), attn_mask=state.attention_bias(x.dtype), with_keys=merges)
        x = x + self.drop_path1(self.ls1(attn_out))
        if merges or state.config.trace_source:
            x = state.merge(self.layer_index, x, metric, self.pyra)
        return x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))


class MergingVisionTransformerMixin:
    """Placed before the model's own class. Modifications vs timm VisionTransformer:
    forward_features runs the blocks one by one with a fresh MergeState (kept on
    `merge_state` for inspection after the forward); average pooling is weighted by size.
    """

    merge_config: MergeConfig
    merge_state: Optional[MergeState]
    merge_replay: Optional[Sequence[Matching]]  # set by `replaying`

    def forward_features(self, x: Tensor, attn_mask: Optional[Tensor] = None, is_causal: bool = False) -> Tensor:
        if attn_mask is not None or is_causal:
            raise ValueError("a token-merging model does not take an attention mask")
        state = MergeState(self.merge_config, num_protected=self.num_prefix_tokens, replay=self.merge_replay)
        self.merge_state = state
        x = self.norm_pre(self.patch_drop(self._pos_embed(self.patch_embed(x))))
        for block in self.blocks:
            x = block(x, state)
        return self.norm(x)

    def pool(self, x: Tensor, pool_type: Optional[str] = None) -> Tensor:
        """x: [B, N, D] -> [B, D]; 'avg' weights each token by the input patches it holds."""
        pool_type = self.global_pool if pool_type is None else pool_type
        size = self.merge_state.size if self.merge_state is not None else None
        if pool_type != "avg" or size is None:
            return super().pool(x, pool_type)
        start = 0 if self.pool_include_prefix else self.num_prefix_tokens
        x, size = x[:, start:], size[:, start:].to(x.dtype)
        return (x * size).sum(dim=1) / size.sum(dim=1)


_MERGING_CLASSES: dict[type, type] = {}


def _merging_class(model_class: type) -> type:
    if issubclass(model_class, MergingVisionTransformerMixin):
        return model_class
    if model_class not in _MERGING_CLASSES:
        name = f"Merging{model_class.__name__}"
        _MERGING_CLASSES[model_class] = type(name, (MergingVisionTransformerMixin, model_class), {})
    return _MERGING_CLASSES[model_class]


class UnsupportedModelError(TypeError):
    """The model cannot be patched without changing what it computes."""


def check_patchable(model: nn.Module) -> None:
    """Raise UnsupportedModelError naming what stops `model` from being patched exactly."""
    name = type(model).__name__
    if not isinstance(model, VisionTransformer):
        raise UnsupportedModelError(f"{name} is not a timm VisionTransformer; token merging supports only those")
    if model.attn_pool is not None or model.global_pool not in _POOLS:
        raise UnsupportedModelError(
            f"{name} pools with {model.global_pool!r}; merging supports 'token' and 'avg' pooling only"
        )
    if not isinstance(model.patch_drop, nn.Identity):
        raise UnsupportedModelError(f"{name} uses patch dropout, which conflicts with token merging; set patch_drop_rate=0")
    for index, block in enumerate(model.blocks):
        if type(block) not in (Block, MergingBlock):
            raise UnsupportedModelError(f"block {index} is a {type(block).__name__}; only timm's standard Block is supported")
        if type(block.attn) not in (Attention, MergingAttention):
            raise UnsupportedModelError(
                f"block {index} uses {type(block.attn).__name__}; only timm's standard Attention is supported"
            )


def geometry(model: VisionTransformer) -> VitGeometry:
    """Token counts and per-token multiply-accumulates of `model` at its nominal image size."""
    first = model.blocks[0].attn
    heads = [m for m in (model.head, getattr(model, "head_dist", None)) if isinstance(m, nn.Linear)]
    return VitGeometry(
        num_tokens=model.patch_embed.num_patches + model.num_prefix_tokens,
        num_protected=model.num_prefix_tokens,
        dim=model.embed_dim,
        attn_dim=first.attn_dim,
        head_dim=first.head_dim,
        attn_macs=tuple(_linear_macs(block.attn) for block in model.blocks),
        mlp_macs=tuple(_linear_macs(block.mlp) for block in model.blocks),
        patch_macs=model.patch_embed.num_patches * model.patch_embed.proj.weight.numel(),
        head_macs=sum(h.in_features * h.out_features for h in heads),
    )


def _linear_macs(module: nn.Module) -> int:
    """Multiply-accumulates per token of every linear inside `module` (LoRA branches included)."""
    total = 0
    for m in module.modules():
        if isinstance(m, LoRALinear):
            total += 0 if m.merged else m.rank * (m.in_features + m.out_features)
        elif isinstance(m, nn.Linear):
            total += m.in_features * m.out_features
    return total


def patch(
    model: nn.Module,
    method: Method = "pyra",
    schedule: ScheduleSpec = 0,
    prop_attn: bool = True,
    trace_source: bool = False,
) -> nn.Module:
    """Make `model` merge tokens, in place, and return it.

    Args:
        model: a timm VisionTransformer (LoRA may already be added).
        method: "pyra" (ToMe + learned modulation), "tome" (plain merging) or "none".
        schedule: tokens merged per layer; see `pyra.method.schedule` for the accepted forms.
        prop_attn: proportional attention (log-size bias on the keys).
        trace_source: record per-layer source maps, matchings and PYRA gates.
    """
    check_method(method)
    check_patchable(model)
    resolved = tuple(resolve_schedule(schedule, geometry(model)))
    if getattr(model, "merge_config", None) is not None and method == "pyra" and _has_modulators(model):
        raise ValueError("this model already has PYRA modulators; use pyra.set_schedule to change r")
    for index, block in enumerate(model.blocks):
        block.__class__ = MergingBlock
        block.attn.__class__ = MergingAttention
        block.layer_index = index
        if "pyra" not in block._modules:
            block.pyra = None
        if method == "pyra" and resolved[index] > 0:
            param = next(block.parameters())
            block.pyra = TokenModulator(resolved[index], model.embed_dim).to(param.device)
    model.__class__ = _merging_class(type(model))
    model.merge_config = MergeConfig(method, resolved, prop_attn, trace_source)
    model.merge_state = None
    model.merge_replay = None
    return model


def _has_modulators(model: nn.Module) -> bool:
    return any(getattr(block, "pyra", None) is not None for block in model.blocks)


def set_schedule(
    model: nn.Module,
    schedule: ScheduleSpec,
    method: Optional[Method] = None,
    trace_source: Optional[bool] = None,
) -> nn.Module:
    """Change r (and optionally the method or tracing) of a patched model without re-patching.

    A PYRA model can merge at most the r it was trained with in each layer (it then uses the
    first rows of `w_r`); asking for more raises ValueError.
    """
    config: Optional[MergeConfig] = getattr(model, "merge_config", None)
    if config is None:
        raise ValueError("model is not patched; call pyra.patch(model, ...) first")
    method = config.method if method is None else method
    check_method(method)
    resolved = tuple(resolve_schedule(schedule, geometry(model)))
    if method == "pyra":
        for index, (block, r) in enumerate(zip(model.blocks, resolved)):
            trained = block.pyra.max_r if block.pyra is not None else 0
            if r > trained:
                raise ValueError(
                    f"layer {index}: PYRA was trained to merge at most {trained} tokens, asked for {r}; "
                    "use a smaller schedule, or method='tome' for training-free merging"
                )
    trace = config.trace_source if trace_source is None else trace_source
    model.merge_config = replace(config, method=method, schedule=resolved, trace_source=trace)
    return model


@contextmanager
def replaying(model: nn.Module, matchings: Sequence[Matching]) -> Iterator[None]:
    """Within the block, `model`'s forwards merge with `matchings` (one per merging layer, in order, e.g. an
    exported model's) instead of matching tokens themselves; each layer's metric and matching are kept on
    `model.merge_state.matchings` as usual."""
    model.merge_replay = matchings
    try:
        yield
    finally:
        model.merge_replay = None


def token_sources(model: nn.Module) -> list[Tensor]:
    """After a forward with trace_source=True: per layer, [B, N_l, N_0] 0/1 source maps."""
    return [record.source for record in layer_records(model)]


def layer_records(model: nn.Module) -> list[LayerRecord]:
    """After a forward with trace_source=True: what each layer merged (see LayerRecord)."""
    state: Optional[MergeState] = getattr(model, "merge_state", None)
    if state is None or not state.config.trace_source:
        raise ValueError("no traced forward yet: patch with trace_source=True (or set_schedule(..., trace_source=True)) and run the model")
    return state.layers


def schedule_flops(model: nn.Module, schedule: ScheduleSpec, method: Optional[Method] = None) -> int:
    """Exact FLOPs of one image's forward at `schedule` (matmuls and convolutions, 2 per MAC)."""
    check_patchable(model)
    geo = geometry(model)
    config: Optional[MergeConfig] = getattr(model, "merge_config", None)
    if method is None:
        method = config.method if config is not None else "tome"
    return forward_flops(resolve_schedule(schedule, geo), geo, method)
