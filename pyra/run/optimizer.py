"""The optimiser of a training: AdamW in named parameter groups, and the warm-up + cosine learning rate.

    optimizer = build_optimizer(model, TrainConfig())   # groups: LoRA + head (decay / no decay), PYRA
    lr = lr_at(step, total_steps, warmup_steps, group["base_lr"], min_ratio)
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import nn

from pyra.method.parameters import parameter_kind

if TYPE_CHECKING:  # pyra.run.train imports this module
    from pyra.run.train import TrainConfig

__all__ = ["GROUP_NAMES", "lr_at", "build_optimizer"]

GROUP_NAMES = ("lora_head_decay", "lora_head_no_decay", "pyra")


def lr_at(step: int, total_steps: int, warmup_steps: int, base_lr: float, min_ratio: float) -> float:
    """Learning rate at 0-based `step`: linear from 0 to `base_lr` over `warmup_steps`,
    then a cosine from `base_lr` down to `base_lr * min_ratio` reached at `total_steps`."""
    if step < warmup_steps:
        return base_lr * step / warmup_steps
    decay_steps = total_steps - warmup_steps
    progress = min(1.0, (step - warmup_steps) / decay_steps) if decay_steps > 0 else 1.0
    floor = base_lr * min_ratio
    return floor + (base_lr - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW over the trainable parameters, in named groups (`group["name"]`):

    - "lora_head_decay": LoRA and head weights with ndim >= 2, lr `config.lr`, weight decay;
    - "lora_head_no_decay": their 1-D parameters (biases), lr `config.lr`, no decay;
    - "pyra": every PYRA parameter (w_r (r, 1), w_d (1, D), LayerNorm), lr `config.pyra_lr`, no decay:
      w_r and w_d are gate vectors, not weight matrices, so they are not decayed either.
    Any other trainable parameter (e.g. a deliberately unfrozen backbone norm) goes with LoRA + head.
    Empty groups are left out; each group keeps its peak lr in `group["base_lr"]`.
    """
    params: dict[str, list[nn.Parameter]] = {name: [] for name in GROUP_NAMES}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if parameter_kind(name) == "pyra":
            params["pyra"].append(param)
        else:
            params["lora_head_decay" if param.ndim >= 2 else "lora_head_no_decay"].append(param)
    settings = {
        "lora_head_decay": (config.lr, config.weight_decay),
        "lora_head_no_decay": (config.lr, 0.0),
        "pyra": (config.pyra_lr, 0.0),
    }
    groups = [
        {"name": name, "params": params[name], "lr": lr, "base_lr": lr, "weight_decay": decay}
        for name, (lr, decay) in settings.items() if params[name]
    ]
    if not groups:
        raise ValueError("the model has no trainable parameters; call pyra.add_lora(model) (and pyra.patch) first")
    return torch.optim.AdamW(groups, lr=config.lr, eps=1e-8)
