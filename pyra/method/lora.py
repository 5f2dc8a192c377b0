"""LoRA (Hu et al., 2021) on the linear layers of timm ViT blocks: add, merge, unmerge."""
from __future__ import annotations

import math
from typing import Iterable, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pyra.method.parameters import freeze_all_but_adapters

LoraTarget = Literal["qkv", "proj", "fc1", "fc2"]
_TARGET_PATHS: dict[str, tuple[str, str]] = {
    "qkv": ("attn", "qkv"),
    "proj": ("attn", "proj"),
    "fc1": ("mlp", "fc1"),
    "fc2": ("mlp", "fc2"),
}


class LoRALinear(nn.Module):
    """base(x) + (alpha / rank) * B A dropout(x); A kaiming-uniform, B zero, so it starts as `base`.

    Args:
        base: the frozen linear layer it adapts.
        rank: rank of the update.
        alpha: scale numerator (scale = alpha / rank).
        dropout: dropout on the LoRA branch input.
    """

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float = 0.0) -> None:
        super().__init__()
        if rank < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {rank}")
        self.base = base
        self.rank, self.scale = rank, alpha / rank
        self.in_features, self.out_features = base.in_features, base.out_features
        factory = dict(device=base.weight.device, dtype=base.weight.dtype)
        self.lora_a = nn.Parameter(torch.empty(rank, base.in_features, **factory))
        self.lora_b = nn.Parameter(torch.zeros(base.out_features, rank, **factory))
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False

    def delta_weight(self) -> Tensor:
        """[out, in] weight update scale * B @ A."""
        return (self.lora_b @ self.lora_a) * self.scale

    def forward(self, x: Tensor) -> Tensor:
        """x: [..., in] -> [..., out]."""
        out = self.base(x)
        if self.merged:
            return out
        return out + F.linear(F.linear(self.dropout(x), self.lora_a), self.lora_b) * self.scale

    @torch.no_grad()
    def merge(self) -> None:
        """Fold the update into the base weight so inference costs nothing extra."""
        if self.merged:
            return
        delta = self.delta_weight()
        if not torch.isfinite(delta).all():
            raise ValueError("LoRA update has non-finite values; refusing to merge it into the weights")
        self.base.weight += delta.to(self.base.weight.dtype)
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Restore the base weight (to float tolerance)."""
        if not self.merged:
            return
        self.base.weight -= self.delta_weight().to(self.base.weight.dtype)
        self.merged = False


def add_lora(
    model: nn.Module,
    rank: int = 8,
    alpha: float | None = None,
    dropout: float = 0.0,
    targets: Iterable[LoraTarget] = ("qkv",),
) -> nn.Module:
    """Wrap the chosen linears of every block in LoRA and freeze all but LoRA, head and PYRA.

    Args:
        model: a timm VisionTransformer (modified in place and returned).
        rank: LoRA rank.
        alpha: scale numerator; defaults to `rank` (scale 1).
        dropout: dropout on the LoRA branch input.
        targets: which block linears to adapt: "qkv", "proj", "fc1", "fc2".
    """
    targets = tuple(targets)
    unknown = [t for t in targets if t not in _TARGET_PATHS]
    if unknown or not targets:
        raise ValueError(f"LoRA targets must be among {sorted(_TARGET_PATHS)}, got {list(targets)}")
    blocks = getattr(model, "blocks", None)
    if blocks is None:
        raise TypeError(f"{type(model).__name__} has no `blocks`; LoRA expects a timm VisionTransformer")
    for block in blocks:
        for target in targets:
            parent_name, child_name = _TARGET_PATHS[target]
            parent = getattr(block, parent_name)
            child = getattr(parent, child_name)
            if isinstance(child, LoRALinear):
                raise ValueError(f"{target} already has LoRA; add_lora was called twice")
            if not isinstance(child, nn.Linear):
                raise TypeError(f"cannot add LoRA to {parent_name}.{child_name} of type {type(child).__name__}")
            setattr(parent, child_name, LoRALinear(child, rank, rank if alpha is None else alpha, dropout))
    freeze_all_but_adapters(model)
    return model


def lora_layers(model: nn.Module) -> list[LoRALinear]:
    return [m for m in model.modules() if isinstance(m, LoRALinear)]


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every LoRA update into its base weight (inference at no extra cost)."""
    for layer in lora_layers(model):
        layer.merge()
    return model


def unmerge_lora(model: nn.Module) -> nn.Module:
    """Undo `merge_lora`, restoring the base weights."""
    for layer in lora_layers(model):
        layer.unmerge()
    return model
