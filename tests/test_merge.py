"""Merging maths against a plain per-token loop written from the definition."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pyra.method.merge import bipartite_soft_matching, merge_source, merge_weighted
from pyra.method.modulation import TokenModulator


def reference_merge(x, size, matching, modulate=None):
    """Loop version: every kept token in output order; a destination absorbs its sources' s*x."""
    out_x, out_size = [], []
    for b in range(x.shape[0]):
        sums = {}  # destination token -> (sum of s*x, sum of s)
        for i in range(matching.r):
            src, dst = 2 * int(matching.src_idx[b, i]), 2 * int(matching.dst_idx[b, i]) + 1
            weighted = x[b, src] * size[b, src]
            if modulate is not None:
                weighted = modulate(weighted[None, None], (x[b, dst] * size[b, dst])[None, None])[0, 0]
            total, mass = sums.get(dst, (x[b, dst] * size[b, dst], size[b, dst]))
            sums[dst] = (total + weighted, mass + size[b, src])
        kept = [2 * int(i) for i in matching.unm_idx[b]] + list(range(1, x.shape[1], 2))
        if matching.num_protected > 1:  # protected tokens first, in their original order
            protected = sorted(t for t in kept if t < matching.num_protected)
            kept = protected + [t for t in kept if t >= matching.num_protected]
        out_x.append(torch.stack([sums[t][0] / sums[t][1] if t in sums else x[b, t] for t in kept]))
        out_size.append(torch.stack([sums[t][1] if t in sums else size[b, t] for t in kept]))
    return torch.stack(out_x), torch.stack(out_size)


@pytest.mark.parametrize("num_protected", [0, 1, 2, 5])
@pytest.mark.parametrize("num_tokens", [17, 20])
@pytest.mark.parametrize("batch", [1, 3])  # one image takes the direct row indexing
def test_merge_weighted_matches_the_loop(num_protected, num_tokens, batch):
    torch.manual_seed(num_tokens + num_protected)
    x = torch.randn(batch, num_tokens, 8, dtype=torch.float64)
    size = torch.randint(1, 4, (batch, num_tokens, 1)).double()
    metric = torch.randn(batch, num_tokens, 4)
    metric[:, 4] = metric[:, 7]  # a sure match, and several sources may share a destination
    matching = bipartite_soft_matching(metric, 6, num_protected)
    got_x, got_size = merge_weighted(matching, x, size)
    want_x, want_size = reference_merge(x, size, matching)
    torch.testing.assert_close(got_size, want_size)
    torch.testing.assert_close(got_x, want_x)


@pytest.mark.parametrize("batch", [1, 2])
def test_pyra_modulated_merge_matches_the_loop(batch):
    torch.manual_seed(0)
    modulator = TokenModulator(5, 8).double()
    with torch.no_grad():
        modulator.w_d.normal_(0, 1.0)
    x = torch.randn(batch, 21, 8, dtype=torch.float64)
    size = torch.randint(1, 4, (batch, 21, 1)).double()
    matching = bipartite_soft_matching(torch.randn(batch, 21, 4), 5, 1)
    got_x, _ = merge_weighted(matching, x, size, modulator)
    # the loop modulates one source at a time, so give it the gates the batched call computes
    channel_gate, token_gate = modulator.gates(
        x.gather(1, 2 * matching.src_idx[..., None].expand(-1, -1, 8)) * size.gather(1, 2 * matching.src_idx[..., None]),
        x.gather(1, (2 * matching.dst_idx + 1)[..., None].expand(-1, -1, 8))
        * size.gather(1, (2 * matching.dst_idx + 1)[..., None]),
    )
    calls = iter([(b, i) for b in range(batch) for i in range(5)])

    def one_source(src, dst):
        b, i = next(calls)
        return src + src * channel_gate[b] * token_gate[b, i]

    want_x, _ = reference_merge(x, size, matching, one_source)
    torch.testing.assert_close(got_x, want_x)
    assert not torch.allclose(got_x, merge_weighted(matching, x, size)[0])  # the gates did something


def test_matching_respects_protection_and_cap():
    metric = torch.randn(2, 11, 4)
    matching = bipartite_soft_matching(metric, 100, 3)
    assert matching.r == (11 - 3) // 2
    sources, destinations = 2 * matching.src_idx, 2 * matching.dst_idx + 1
    assert (sources >= 3).all() and (destinations >= 3).all()
    assert (matching.scores[:, :-1] >= matching.scores[:, 1:]).all()  # most similar first
    source = merge_source(matching, torch.eye(11)[None].expand(2, -1, -1))
    torch.testing.assert_close(source.sum(1), torch.ones(2, 11))


class _SplitByScore(torch.nn.Module):
    def __init__(self, r: int) -> None:
        super().__init__()
        self.r = r

    def forward(self, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        from pyra.method.merge import _split_by_score

        return _split_by_score(values, self.r)


@pytest.mark.parametrize("width, r", [(33, 13), (33, 0), (8, 8), (1, 1)])
def test_matching_order_in_onnxruntime_equals_a_stable_descending_argsort_with_ties(tmp_path, width, r) -> None:
    """The ranking an ONNX export runs (TopK), in onnxruntime, picks the same sources, in the same order, and
    the same kept tokens as torch's stable argsort, also when scores tie (blank patches) or are -inf."""
    import contextlib
    import io

    import onnxruntime

    path = tmp_path / "split.onnx"
    with torch.no_grad(), contextlib.redirect_stdout(io.StringIO()):
        torch.onnx.export(_SplitByScore(r), (torch.zeros(3, width),), str(path), dynamo=True, external_data=False)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    generator = torch.Generator().manual_seed(width + r)
    for _ in range(50):
        values = torch.randint(-3, 3, (3, width), generator=generator).float()
        values[values == -3] = -math.inf
        order = values.argsort(dim=1, descending=True, stable=True)
        exported_src, exported_kept = session.run(None, {session.get_inputs()[0].name: values.numpy()})
        assert np.array_equal(exported_src, order[:, :r].numpy())
        assert np.array_equal(exported_kept, order[:, r:].sort(dim=1).values.numpy())


@pytest.mark.parametrize("num_protected", [0, 1, 5])
def test_the_forms_an_export_traces_merge_as_eager_torch_does(monkeypatch, num_protected) -> None:
    """The matching and merge an export traces (protection as an added mask, flat rows for a fixed batch of
    one) give exactly what eager torch gives (distinct scores, so the rankings cannot differ by ties)."""
    metric, x = torch.randn(1, 21, 8, dtype=torch.float64), torch.randn(1, 21, 6)
    size = torch.rand(1, 21, 1) + 0.5
    eager = bipartite_soft_matching(metric, 7, num_protected)
    expected = merge_weighted(eager, x, size)
    with monkeypatch.context() as patched:
        patched.setattr(torch.compiler, "is_exporting", lambda: True)
        traced = bipartite_soft_matching(metric, 7, num_protected)
        out, new_size = merge_weighted(traced, x, size)
    for name in ("src_idx", "dst_idx", "unm_idx", "scores"):
        assert torch.equal(getattr(traced, name), getattr(eager, name)), name
    assert torch.equal(out, expected[0]) and torch.equal(new_size, expected[1])


def best_partners(metric: torch.Tensor, num_protected: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, N, C] -> ([B, N_A] each A token's highest cosine similarity to an unprotected B token, [B, N_A] that
    B token's index in set B), by loops; -inf for a protected A token."""
    batch, num_tokens, _ = metric.shape
    best = torch.full((batch, (num_tokens + 1) // 2), -math.inf, dtype=torch.float64)
    partner = torch.zeros(batch, (num_tokens + 1) // 2, dtype=torch.int64)
    for b in range(batch):
        for a in range(num_protected + num_protected % 2, num_tokens, 2):
            for d in range(num_protected + 1 - num_protected % 2, num_tokens, 2):
                similarity = float(torch.nn.functional.cosine_similarity(metric[b, a], metric[b, d], dim=0))
                if similarity > best[b, a // 2]:
                    best[b, a // 2], partner[b, a // 2] = similarity, d // 2
    return best, partner


def with_sources(matching, src_idx: torch.Tensor, kept_idx: torch.Tensor, dst_idx: torch.Tensor | None = None):
    from pyra.method.merge import Matching

    return Matching(src_idx, matching.dst_idx if dst_idx is None else dst_idx, kept_idx, matching.scores,
                    matching.num_protected)


@pytest.mark.parametrize("num_protected", [0, 1, 2, 5])
def test_a_matching_made_by_the_rule_falls_short_by_nothing(num_protected):
    from pyra.method.merge import matching_shortfall

    metric = torch.randn(3, 21, 8, generator=torch.Generator().manual_seed(num_protected))
    for r in (0, 1, 4, 8):
        matching = bipartite_soft_matching(metric, r, num_protected)
        assert torch.equal(matching_shortfall(metric, matching), torch.zeros(3))


def test_a_swapped_matching_falls_short_by_the_similarity_it_gives_up():
    """A kept token swapped in for the last source, sources out of order, a second-best destination: the
    shortfall is the gap in best-partner similarity (worked out by loops), and nothing for exact ties."""
    from pyra.method.merge import matching_shortfall

    metric = torch.randn(1, 21, 8, generator=torch.Generator().manual_seed(3))
    matching = bipartite_soft_matching(metric, 4, 1)
    best, partner = (t[0] for t in best_partners(metric.double(), 1))
    src, kept = matching.src_idx[0].tolist(), matching.unm_idx[0].tolist()
    assert matching.dst_idx[0].tolist() == partner[src].tolist()
    runner_up = max(kept[1:], key=lambda k: best[k])  # the most similar kept token (kept[0]: the class token)
    swapped = with_sources(matching, torch.tensor([src[:-1] + [runner_up]]),
                           torch.tensor([sorted([k for k in kept if k != runner_up] + [src[-1]])]),
                           torch.tensor([partner[src[:-1] + [runner_up]].tolist()]))
    assert float(matching_shortfall(metric, swapped)) == pytest.approx(float(best[src[-1]] - best[runner_up]), abs=1e-6)
    other = (int(partner[src[-1]]) + 1) % 10  # not the last source's best partner in set B
    second = with_sources(matching, matching.src_idx, matching.unm_idx, torch.tensor([partner[src].tolist()[:-1] + [other]]))
    given = torch.nn.functional.cosine_similarity(metric[0, 2 * src[-1]].double(), metric[0, 2 * other + 1].double(), dim=0)
    assert float(matching_shortfall(metric, second)) == pytest.approx(float(best[src[-1]] - given), abs=1e-6)
    reordered = with_sources(matching, matching.src_idx.flip(1), matching.unm_idx, matching.dst_idx.flip(1))
    assert float(matching_shortfall(metric, reordered)) == pytest.approx(float(best[src[0]] - best[src[-1]]), abs=1e-6)
    tied = torch.cat([metric[:, :1], metric[:, 3:5].repeat(1, 3, 1)], dim=1)  # two A tokens, two B: all alike
    tie_matching = bipartite_soft_matching(tied, 2, 1)
    flipped = with_sources(tie_matching, tie_matching.src_idx.flip(1), tie_matching.unm_idx, tie_matching.dst_idx.flip(1))
    assert not torch.equal(flipped.src_idx, tie_matching.src_idx)
    assert float(matching_shortfall(tied, flipped)) == 0.0


def test_a_matching_that_merges_a_protected_token_or_drops_one_falls_short_without_bound():
    from pyra.method.merge import matching_shortfall

    metric = torch.randn(1, 21, 8, generator=torch.Generator().manual_seed(4))
    matching = bipartite_soft_matching(metric, 3, 1)
    kept = matching.unm_idx[0].tolist()  # starts with the protected class token, A position 0
    protected_merged = with_sources(matching, torch.tensor([[0] + matching.src_idx[0, 1:].tolist()]),
                                    torch.tensor([sorted(kept[1:] + [int(matching.src_idx[0, 0])])]))
    assert math.isinf(float(matching_shortfall(metric, protected_merged)))
    duplicated = with_sources(matching, matching.src_idx[:, [0, 0, 1]], matching.unm_idx)
    assert math.isinf(float(matching_shortfall(metric, duplicated)))
    descending_kept = with_sources(matching, matching.src_idx, matching.unm_idx.flip(1))
    assert math.isinf(float(matching_shortfall(metric, descending_kept)))
