"""The PYRA token modulator (Xiong et al., ECCV 2024, arXiv 2403.09192, section 3)."""
from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F


class TokenModulator(nn.Module):
    """Re-activates the r source tokens of one layer before they are merged.

    M = LayerNorm(S + T); channel gate 2*sigmoid(w_r^T M) in (0, 2), [B, 1, D];
    token gate 2*sigmoid(M w_d^T) - 1 in (-1, 1), [B, r, 1]; S' = S + S * gate_ch * gate_tok.
    w_d starts at zero, so the token gate is 0 and the layer starts exactly as ToMe.

    Args:
        r: most sources this layer may merge (rows of w_r).
        dim: token width D.
    """

    def __init__(self, r: int, dim: int) -> None:
        super().__init__()
        if r < 1:
            raise ValueError(f"a PYRA modulator needs r >= 1, got {r}")
        self.w_r = nn.Parameter(torch.empty(r, 1).uniform_(-1.0, 1.0))
        self.w_d = nn.Parameter(torch.zeros(1, dim))
        self.norm = nn.LayerNorm(dim)

    @property
    def max_r(self) -> int:
        return self.w_r.shape[0]

    def _checked_r(self, src: Tensor) -> int:
        """r of src [B, r, D]; ValueError if this layer was sized for fewer."""
        r = src.shape[1]
        if r > self.max_r:
            raise ValueError(f"this layer was trained to merge at most {self.max_r} tokens, asked for {r}")
        return r

    def gates(self, src: Tensor, dst: Tensor) -> tuple[Tensor, Tensor]:
        """src, dst: [B, r, D] size-weighted -> (channel gate [B, 1, D], token gate [B, r, 1])."""
        r = self._checked_r(src)
        mixed = self.norm(src + dst)  # [B, r, D]
        # [B, D, r] @ [r, 1] -> [B, D, 1] -> [B, 1, D]
        channel_gate = 2 * torch.sigmoid(mixed.transpose(1, 2) @ self.w_r[:r].to(mixed.dtype)).transpose(1, 2)
        token_gate = 2 * torch.sigmoid(mixed @ self.w_d.to(mixed.dtype).t()) - 1
        return channel_gate, token_gate

    def forward(self, src: Tensor, dst: Tensor) -> Tensor:
        """src, dst: [B, r, D] size-weighted sources and destinations -> modulated sources [B, r, D].

        `reactivate(src, *self.gates(src, dst))` in fewer operations (it runs in every merging layer):
        2 sigmoid(a) - 1 = tanh(a / 2), and the channel gate's factor 2 moves into one addcmul.
        """
        r = self._checked_r(src)
        norm = self.norm  # called as a function: a module call's hooks cost more than the norm at batch 1
        mixed = F.layer_norm(src + dst, norm.normalized_shape, norm.weight, norm.bias, norm.eps)  # [B, r, D]
        half_channel_gate = torch.sigmoid(self.w_r[:r].to(mixed.dtype).t() @ mixed)  # [1, r] @ [B, r, D] -> [B, 1, D]
        token_gate = torch.tanh(0.5 * (mixed @ self.w_d.to(mixed.dtype).t()))  # [B, r, 1]
        return torch.addcmul(src, src * half_channel_gate, token_gate, value=2.0)


def reactivate(src: Tensor, channel_gate: Tensor, token_gate: Tensor) -> Tensor:
    """S' = S + (S * gate_ch) * gate_tok; src [B, r, D], gates [B, 1, D] and [B, r, 1]."""
    return src + src * channel_gate * token_gate
