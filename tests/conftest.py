"""Shared fixtures: tiny, seeded, random-init timm ViTs that run in milliseconds on CPU."""
from __future__ import annotations

import pytest
import timm
import torch

torch.set_num_threads(1)  # tiny tensors: extra threads only add overhead on a shared machine

# name -> timm kwargs; each exercises one feature the patch must keep
TINY_MODELS: dict[str, dict] = {
    "vit_tiny_patch16_224": dict(img_size=64),
    "deit_tiny_distilled_patch16_224": dict(img_size=64),
    "vit_small_patch14_dinov2": dict(img_size=56, depth=4),
    "vit_small_patch14_reg4_dinov2": dict(img_size=56, depth=4),
    "vit_tiny_patch16_224@avg": dict(img_size=64, global_pool="avg", class_token=False, fc_norm=True),
    "vit_tiny_patch16_224@qknorm": dict(img_size=64, qk_norm=True, init_values=0.5),
}


def make_tiny(key: str, num_classes: int = 5, seed: int = 0) -> torch.nn.Module:
    """A random-init model with non-trivial LayerScale so merges visibly change the output."""
    torch.manual_seed(seed)
    name = key.split("@")[0]
    model = timm.create_model(name, pretrained=False, num_classes=num_classes, **TINY_MODELS[key])
    with torch.no_grad():
        for module in model.modules():
            if hasattr(module, "gamma") and isinstance(module.gamma, torch.nn.Parameter):
                module.gamma.uniform_(0.2, 0.8)
    return model.eval()


@pytest.fixture(params=list(TINY_MODELS))
def tiny_key(request) -> str:
    return request.param


def image_batch(model: torch.nn.Module, batch: int = 2, seed: int = 1) -> torch.Tensor:
    size = model.patch_embed.img_size
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, *size, generator=generator)
