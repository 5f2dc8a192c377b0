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


def _split_by_score(best_score: Tensor, r: int) -> tuple[Tensor, Tensor]:
    """best_score: [B, N_A] -> (the r best positions, most similar first [B, r]; the others,
    ascending [B, N_A - r]); ties go to the earlier position. Eager runs torch's stable argsort;
    an ONNX export runs TopK, whose specification breaks ties by the lower index (ONNX has no
    stable sort, and torch's topk promises no order among ties, so only the export uses it)."""
    if torch.compiler.is_exporting():
        order = best_score.topk(best_score.shape[1], dim=1).indices
        kept = order[:, r:]
        return order[:, :r], kept.topk(kept.shape[1], dim=1, largest=False).values if kept.shape[1] else kept
    order = best_score.argsort(dim=1, descending=True, stable=True)
    return order[:, :r], order[:, r:].sort(dim=1).values


def _similarities(metric: Tensor, num_protected: int) -> Tensor:
    """metric: [B, N, Ck] -> [B, N_A, N_B] cosine similarity of each A token to each B token, -inf
    where either is protected."""
    metric = metric.float()
    metric = metric / torch.linalg.vector_norm(metric, dim=-1, keepdim=True).clamp_min(1e-12)  # as F.normalize
    scores = metric[:, ::2] @ metric[:, 1::2].transpose(-1, -2)  # [B, N_A, N_B]
    if torch.compiler.is_exporting():  # one addition of a constant instead of two scatters
        return scores + _protection_mask(*scores.shape[1:], num_protected, scores.device)
    if num_protected > 0:  # protected A tokens: even positions < P
        scores.narrow(1, 0, math.ceil(num_protected / 2)).fill_(-math.inf)
    if num_protected > 1:  # protected B tokens: odd positions < P
        scores.narrow(2, 0, num_protected // 2).fill_(-math.inf)
    return scores


def _protection_mask(num_a: int, num_b: int, num_protected: int, device: torch.device) -> Tensor:
    """[N_A, N_B]: -inf in the rows and columns of protected tokens, 0 elsewhere (built from constants, so an
    export stores it)."""
    mask = torch.zeros(num_a, num_b, device=device)
    mask[: math.ceil(num_protected / 2)] = -math.inf
    mask[:, : num_protected // 2] = -math.inf
    return mask


@torch.no_grad()
def bipartite_soft_matching(metric: Tensor, r: int, num_protected: int) -> Matching:
    """metric: [B, N, Ck] (keys averaged over heads) -> Matching of min(r, max_merge) pairs."""
    r = min(r, max_merge(metric.shape[1], num_protected))
    best_score, best_dst = _similarities(metric, num_protected).max(dim=-1)  # [B, N_A]
    src_idx, unm_idx = _split_by_score(best_score, r)
    return Matching(
        src_idx=src_idx,
        dst_idx=best_dst.gather(1, src_idx),
        unm_idx=unm_idx,
        scores=best_score.gather(1, src_idx),
        num_protected=num_protected,
    )


@torch.no_grad()
def matching_shortfall(metric: Tensor, matching: Matching) -> Tensor:
    """metric: [B, N, Ck] and a matching of its tokens (made elsewhere, e.g. by an exported model) -> [B]:
    the largest cosine-similarity gap by which the matching departs from `bipartite_soft_matching`'s rule.

    Counted: a destination less similar than its source's best partner; a kept token whose best
    partner is more similar than a merged source's; a source ranked before a more similar one. 0 for the
    rule's own matching, and for any that differs from it only among exactly tied similarities; inf when
    a protected token is merged or into, or when the merged and kept tokens do not split set A.
    """
    scores = _similarities(metric, matching.num_protected)  # [B, N_A, N_B]
    batch, num_a, num_b = scores.shape
    src, dst, kept = matching.src_idx, matching.dst_idx, matching.unm_idx
    best = scores.max(dim=-1).values  # [B, N_A]
    src_best = best.gather(1, src)  # [B, r]
    chosen = scores.gather(1, src[..., None].expand(-1, -1, num_b)).gather(2, dst[..., None]).squeeze(-1)  # [B, r]
    gaps = [src_best - chosen]  # [B, r] each: a worse destination than the best
    if matching.r > 1:  # a later source more similar than any before it
        gaps.append(src_best[:, 1:] - src_best.cummin(dim=1).values[:, :-1])
    if matching.r > 0 and kept.shape[1] > 0:  # a kept token more similar than the least similar source
        gaps.append(best.gather(1, kept).amax(dim=1, keepdim=True) - src_best.amin(dim=1, keepdim=True))
    shortfall = torch.cat(gaps, dim=1).nan_to_num(nan=math.inf).clamp_min(0).amax(dim=1) if matching.r > 0 \
        else scores.new_zeros(batch)
    positions = torch.arange(num_a, device=scores.device)
    splits = (torch.cat([src, kept], dim=1).sort(dim=1).values == positions).all(dim=1)  # [B]
    ascending = (kept[:, 1:] > kept[:, :-1]).all(dim=1)
    return torch.where(splits & ascending, shortfall, torch.full_like(shortfall, math.inf))


def _protected_order(num_protected: int) -> list[int]:
    """Indices into cat([A protected, B protected]) that restore the original prefix order."""
    num_a = math.ceil(num_protected / 2)
    return [j // 2 if j % 2 == 0 else num_a + j // 2 for j in range(num_protected)]


def _output_order(unmerged: Tensor, b: Tensor, num_protected: int) -> list[Tensor]:
    """Kept A tokens [B, N_A - r, ...] and B tokens [B, N_B, ...] as the parts, along dim 1, of the
    output order: protected tokens first (original order), then the other kept A tokens, then the
    B tokens. B token j (never protected once merged into) lands at position N_A - r + j. Works on
    token rows [B, *, C] and on token positions [B, *] alike."""
    num_a, num_b = math.ceil(num_protected / 2), num_protected // 2
    if num_b == 0:
        return [unmerged, b]
    prefix = torch.cat([unmerged[:, :num_a], b[:, :num_b]], dim=1)[:, _protected_order(num_protected)]
    return [prefix, unmerged[:, num_a:], b[:, num_b:]]


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
    return torch.cat(_output_order(unmerged, b, matching.num_protected), dim=1)


def _kept_positions(matching: Matching, num_tokens: int) -> list[Tensor]:
    """Positions in the input of the tokens that stay, as [B, *] parts of the output order (`_output_order`)."""
    a_positions = 2 * matching.unm_idx  # [B, N_A - r]
    b_positions = torch.arange(1, num_tokens, 2, device=a_positions.device).expand(a_positions.shape[0], -1)
    return _output_order(a_positions, b_positions, matching.num_protected)


def _one_image(x: Tensor) -> bool:
    """True for an eager batch of one, whose rows are indexed directly (an export takes the flat form,
    which needs fewer ONNX operations)."""
    return x.shape[0] == 1 and not torch.compiler.is_exporting()


def _flat_rows(index: Tensor, num_tokens: int) -> Tensor:
    """index [B, K] of rows in [B, N, C] -> [B * K] rows of its [B * N, C] flattening."""
    batch = index.shape[0]
    if type(batch) is int and batch == 1:  # a fixed batch of one (a dynamic batch is symbolic, never taken for 1)
        return index.reshape(-1)
    return (index + torch.arange(0, batch * num_tokens, num_tokens, device=index.device)[:, None]).reshape(-1)


def take_rows(x: Tensor, index: Tensor) -> Tensor:
    """x: [B, N, C], index: [B, K] -> [B, K, C], row index[b, k] of x[b] (index_select: far faster
    than gather on CPU)."""
    if _one_image(x):
        return x.index_select(1, index[0])
    batch, num_tokens, channels = x.shape
    return x.reshape(batch * num_tokens, channels).index_select(0, _flat_rows(index, num_tokens)).view(batch, -1, channels)


def add_rows(x: Tensor, index: Tensor, rows: Tensor) -> Tensor:
    """x: [B, N, C] plus rows [B, K, C] added at index [B, K] (repeats accumulate), out of place."""
    if _one_image(x):
        return x.index_add(1, index[0], rows)
    batch, num_tokens, channels = x.shape
    flat = _flat_rows(index, num_tokens)
    return x.reshape(batch * num_tokens, channels).index_add(0, flat, rows.reshape(-1, channels)).view_as(x)


def merge_weighted(
    matching: Matching, x: Tensor, size: Tensor, modulate: Modulate | None = None
) -> tuple[Tensor, Tensor]:
    """x: [B, N, C], size: [B, N, 1] -> both with N - r tokens; tokens averaged by size.

    A destination d that receives sources i becomes (s_d x_d + sum_i S_i) / (s_d + sum_i s_i),
    with S_i = s_i x_i (or, with `modulate`, the modulated S_i; modulate sees sources and
    destinations multiplied by their sizes); sizes add unmodulated. Only the r merged rows are
    computed: every other token is copied once, in output order. The kept, source and
    destination rows are fetched in one index_select each for x and size.
    """
    num_tokens, r = x.shape[1], matching.r
    rows = torch.cat(_kept_positions(matching, num_tokens) + [2 * matching.src_idx, 2 * matching.dst_idx + 1], dim=1)
    parts = [num_tokens - r, r, r]  # kept [B, N - r], sources [B, r], destinations [B, r]
    out, src, dst = take_rows(x, rows).split(parts, dim=1)
    kept_size, src_size, dst_size = take_rows(size, rows).split(parts, dim=1)
    out_dst = (math.ceil(num_tokens / 2) - r) + matching.dst_idx  # [B, r] positions in `out`
    new_size = add_rows(kept_size, out_dst, src_size)  # [B, N - r, 1]
    weighted_src = src * src_size
    if modulate is not None:
        weighted_src = modulate(weighted_src, dst * dst_size)
    delta = (weighted_src - src_size * dst) / take_rows(new_size, out_dst)
    return add_rows(out, out_dst, delta.to(out.dtype)), new_size


def merge_source(matching: Matching, source: Tensor) -> Tensor:
    """source: [B, N, N0] 0/1 map of input tokens held by each token -> [B, N - r, N0]."""
    return merge(matching, source, "amax")
