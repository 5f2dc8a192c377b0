"""PYRA's gates against numbers worked out by hand (section 3 of the paper), not by the code under test."""
from __future__ import annotations

import math

import torch

from pyra.method.modulation import TokenModulator


def test_gates_and_reactivation_match_a_hand_worked_example():
    """B = 1, r = 2, D = 2. S = [[1, 0], [0, 2]], T = [[1, 2], [0, 0]], so S + T = [[2, 2], [0, 2]].
    LayerNorm (weight 1, bias 0, eps 1e-5) of each row: [0, 0] and [-a, a] with a = 1 / sqrt(1 + 1e-5).
    w_r = [0.5, 1]: channel logits per channel = sum_i M[i, d] w_r[i] = [-a, a] -> gate 2 sigmoid = [0.537885, 1.462115].
    w_d = [1, -1]: token logits = M w_d = [0, -2a] -> gate 2 sigmoid - 1 = [0, -0.761592].
    S' = S + S * gate_ch * gate_tok: row 1 unchanged [1, 0]; row 2 = [0, 2 + 2 * 1.462115 * -0.761592] = [0, -0.227071].
    """
    modulator = TokenModulator(r=2, dim=2)
    with torch.no_grad():
        modulator.w_r.copy_(torch.tensor([[0.5], [1.0]]))
        modulator.w_d.copy_(torch.tensor([[1.0, -1.0]]))
    src = torch.tensor([[[1.0, 0.0], [0.0, 2.0]]], dtype=torch.float64)
    dst = torch.tensor([[[1.0, 2.0], [0.0, 0.0]]], dtype=torch.float64)
    modulator = modulator.double()

    channel_gate, token_gate = modulator.gates(src, dst)
    assert channel_gate.shape == (1, 1, 2) and token_gate.shape == (1, 2, 1)
    assert torch.allclose(channel_gate.flatten(), torch.tensor([0.5378848, 1.4621152], dtype=torch.float64), atol=1e-6)
    assert torch.allclose(token_gate.flatten(), torch.tensor([0.0, -0.7615921], dtype=torch.float64), atol=1e-6)
    out = modulator(src, dst)
    assert torch.allclose(out, torch.tensor([[[1.0, 0.0], [0.0, -0.2270706]]], dtype=torch.float64), atol=1e-6)


def test_the_hand_worked_numbers_follow_from_the_formulas():
    """The constants above, recomputed with math only (sigmoid and LayerNorm written out)."""
    a = 1 / math.sqrt(1 + 1e-5)
    sigmoid = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    assert abs(2 * sigmoid(-a) - 0.5378848) < 1e-6 and abs(2 * sigmoid(a) - 1.4621152) < 1e-6
    assert abs(2 * sigmoid(-2 * a) - 1 - (-0.7615921)) < 1e-6
    assert abs(2 + 2 * (2 * sigmoid(a)) * (2 * sigmoid(-2 * a) - 1) - (-0.2270706)) < 1e-6


def test_the_fused_forward_equals_the_gates_formula():
    """forward() is written with tanh and addcmul; it must equal S + S * gate_ch * gate_tok from gates()."""
    torch.manual_seed(0)
    modulator = TokenModulator(r=7, dim=16)
    with torch.no_grad():
        modulator.w_d.normal_(0, 1.0)
        modulator.norm.weight.normal_(1.0, 0.2)
        modulator.norm.bias.normal_(0, 0.2)
    for batch, r in ((1, 7), (3, 4)):
        src, dst = torch.randn(batch, r, 16), torch.randn(batch, r, 16)
        channel_gate, token_gate = modulator.gates(src, dst)
        torch.testing.assert_close(modulator(src, dst), src + src * channel_gate * token_gate, rtol=1e-6, atol=1e-6)
