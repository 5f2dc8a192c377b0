"""Bipartite soft matching and size-weighted token merging (ToMe, Bolya et al., ICLR 2023).

Pure tensor functions. Shapes: B batch, N tokens, C channels, r tokens merged.
Tokens alternate between set A (even positions) and set B (odd positions). Every
unprotected A token picks its most similar B token; the r A tokens with the best
match are merged into their partners (several may share one partner). The leading
`num_protected` tokens (class, distillation, register tokens) are never merged and
stay, in order, at the front of the output.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

Modulate = Callable[[Tensor, Tensor], Tensor]
"""(sources [B, r, C], destinations [B, r, C]) -> modulated sources [B, r, C]."""


@dataclass(frozen=True)
class Matching:
    """Which tokens merge into which, computed once per layer.

    src_idx: [B, r] positions in A of the merged sources, most similar first.
    dst_idx: [B, r] positions in B of their destinations.
    unm_idx: [B, N_A - r] positions in A that stay, ascending (protected first).
    scores:  [B, r] cosine similarity of each merged pair.
    """

    src_idx: Tensor
    dst_idx: Tensor
    unm_idx: Tensor
    scores: Tensor
    num_protected: int

    @property
    def r(self) -> int:
        return self.src_idx.shape[1]


def max_merge(num_tokens: int, num_protected: int) -> int:
    """Largest r one layer can merge: (N - protected) // 2."""
    return max(num_tokens - num_protected, 0) // 2


@torch.no_grad()
def bipartite_soft_matching(metric: Tensor, r: int, num_protected: int) -> Matching:
    """metric: [B, N, Ck] (keys averaged over heads) -> Matching of min(r, max_merge) pairs."""
    batch, num_tokens, _ = metric.shape
    r = min(r, max_merge(num_tokens, num_protected))
    metric = F.normalize(metric.float(), dim=-1)
    a, b = metric[:, ::2], metric[:, 1::2]
    scores = a @ b.transpose(-1, -2)  # [B, N_A, N_B]
    scores[:, : math.ceil(num_protected / 2), :] = -math.inf  # protected A tokens: even positions < P
    scores[:, :, : num_protected // 2] = -math.inf  # protected B tokens: odd positions < P
    best_score, best_dst = scores.max(dim=-1)  # [B, N_A]
    order = best_score.argsort(dim=-1, descending=True, stable=True)  # [B, N_A]
    src_idx = order[:, :r]
    return Matching(
        src_idx=src_idx,
        dst_idx=best_dst.gather(1, src_idx),
        unm_idx=order[:, r:].sort(dim=-1).values,
        scores=best_score.gather(1, src_idx),
        num_protected=num_protected,
    )


def _protected_order(num_protected: int) -> list[int]:
    """Indices into cat([A protected, B protected]) that restore the original prefix order."""
    num_a = math.ceil(num_protected / 2)
    return [j // 2 if j % 2 == 0 else num_a + j // 2 for j in range(num_protected)]


def merge(
    matching: Matching,
    x: Tensor,
    reduce: Literal["sum", "amax"],
    modulate: Modulate | None = None,
) -> Tensor:
    """x: [B, N, C] -> [B, N - r, C]: sources reduced into destinations, protected tokens first.

    `modulate` (PYRA) rewrites the sources from (sources, their destinations) before the reduce.
    """
    channels = x.shape[-1]
    a, b = x[:, ::2], x[:, 1::2]
    unmerged = a.gather(1, matching.unm_idx[..., None].expand(-1, -1, channels))
    src = a.gather(1, matching.src_idx[..., None].expand(-1, -1, channels))  # [B, r, C]
    dst_index = matching.dst_idx[..., None].expand(-1, -1, channels)  # [B, r, C]
    if modulate is not None:
        src = modulate(src, b.gather(1, dst_index))
    b = b.scatter_reduce(1, dst_index, src.to(b.dtype), reduce=reduce)
    num_protected = matching.num_protected
    num_a, num_b = math.ceil(num_protected / 2), num_protected // 2
    if num_b == 0:
        return torch.cat([unmerged, b], dim=1)
    prefix = torch.cat([unmerged[:, :num_a], b[:, :num_b]], dim=1)[:, _protected_order(num_protected)]
    return torch.cat([prefix, unmerged[:, num_a:], b[:, num_b:]], dim=1)


def merge_weighted(
    matching: Matching, x: Tensor, size: Tensor, modulate: Modulate | None = None
) -> tuple[Tensor, Tensor]:
    """x: [B, N, C], size: [B, N, 1] -> both with N - r tokens; tokens averaged by size.

    Sources and destinations are multiplied by their sizes before `modulate` sees them;
    sizes add unmodulated.
    """
    weighted = merge(matching, x * size, "sum", modulate)
    new_size = merge(matching, size, "sum")
    return (weighted / new_size).to(x.dtype), new_size


def merge_source(matching: Matching, source: Tensor) -> Tensor:
    """source: [B, N, N0] 0/1 map of input tokens held by each token -> [B, N - r, N0]."""
    return merge(matching, source, "amax")
