"""Linear weights laid out for fast CPU inference.

nn.Linear keeps its weight [out, in] row-major, and F.linear multiplies the tokens by its transpose.
MKL's single-precision matrix product is much slower with that transposed operand when the tokens
are few: a ViT-S block's linear layers at 40 tokens take 1.28x as long at 1 thread and 2.25x at 2
threads as with each transpose stored contiguous (`benchmarks/linear_layout.py`). Batch-1 layers
after merging have 10 to 60 tokens, so storing each weight column-major (the same values, the same
shape) makes a merged model's batch-1 forward 1.14x faster at 1 thread and up to 1.3x at 2, and
timm's up to 1.16x (`benchmarks/batch1_latency.py`, docs/PERFORMANCE.md).
"""
from __future__ import annotations

from torch import nn


def column_major_linears(model: nn.Module) -> nn.Module:
    """Store every CPU nn.Linear weight of `model` column-major, in place, and return `model`.

    Values, shapes, parameters and state-dict keys stay the same (a saved state dict needs
    `.contiguous()` first); only the memory order changes, so results agree to float rounding.
    """
    for module in model.modules():
        if isinstance(module, nn.Linear) and module.weight.device.type == "cpu" and module.weight.is_contiguous():
            module.weight.data = module.weight.data.t().contiguous().t()
    return model
