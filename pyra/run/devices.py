"""Where a model runs: the default device (a GPU when one is visible) and a model's own device."""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["default_device", "model_device"]


def default_device() -> str:
    """"cuda" when a GPU is visible, else "cpu": the engine runs on either without code changes."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def model_device(model: nn.Module) -> torch.device:
    """Device of the model's first parameter (CPU for a parameter-less module)."""
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")
