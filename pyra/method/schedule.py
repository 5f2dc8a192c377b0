"""Merge schedules (tokens merged per layer) and the exact FLOPs of a forward at a schedule.

A schedule spec is one of:
  int r                 the same r in every layer
  list[int]             one r per layer
  (r, inflection)       ToMe's linear form: from r * (1 - inflection) to r * (1 + inflection)
  "low" / "high"        the PYRA code base's named schedules (exact lists for ViT-B/16 and
                        ViT-L/16 at 224 px; same-shaped schedules derived for anything else)
  float > 1             a target FLOPs ratio (uncompressed / compressed), solved into a schedule
                        shaped like "high": most merging in early layers, so late layers keep tokens
Every r is capped at (tokens - protected) // 2 in its layer.

FLOPs are counted as 2 per multiply-accumulate of every matmul and convolution (the same
convention as torch.utils.flop_counter); element-wise work (norms, softmax, gathers) is not counted.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal, Sequence, Union, get_args

from pyra.method.merge import max_merge

ScheduleSpec = Union[int, Sequence[int], tuple[int, float], str, float]
Method = Literal["pyra", "tome", "none"]
METHODS: tuple[str, ...] = get_args(Method)


def check_method(method: str) -> None:
    """ValueError unless `method` is one of METHODS."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")

# Reference lists from the PYRA code base, keyed by (depth, tokens incl. class token).
_REFERENCE: dict[tuple[int, int], dict[str, list[int]]] = {
    (12, 197): {
        "low": [16] * 11 + [10],
        "high": [40, 34, 30, 24, 18, 14, 10, 8, 4, 4, 3, 3],
    },
    (24, 197): {
        "low": [8] * 23 + [6],
        "high": [20, 19, 18, 17, 15, 13, 13, 12, 10, 9, 8, 6, 6, 4, 4, 4, 3, 3, 2, 2, 1, 1, 1, 1],
    },
}


@dataclass(frozen=True)
class VitGeometry:
    """What FLOPs and schedules depend on, for one image through one ViT.

    Per-token multiply-accumulates are per block: `attn_macs` for the linears that see all
    tokens (qkv, proj and their LoRA branches), `mlp_macs` for those after the merge.
    """

    num_tokens: int  # N_0, prefix tokens included
    num_protected: int  # class + distillation + register tokens
    dim: int
    attn_dim: int  # heads * head dim
    head_dim: int
    attn_macs: tuple[int, ...]
    mlp_macs: tuple[int, ...]
    patch_macs: int  # patch embedding, whole image
    head_macs: int  # classifier(s), pooled vector(s)

    @property
    def depth(self) -> int:
        return len(self.attn_macs)


def vit_b16_geometry() -> VitGeometry:
    """ViT-B/16 at 224 px with a 1000-class head (used to calibrate named schedules)."""
    dim = 768
    return VitGeometry(
        num_tokens=197, num_protected=1, dim=dim, attn_dim=dim, head_dim=64,
        attn_macs=(dim * 3 * dim + dim * dim,) * 12, mlp_macs=(2 * dim * 4 * dim,) * 12,
        patch_macs=196 * dim * 3 * 16 * 16, head_macs=dim * 1000,
    )


def cap_schedule(schedule: Sequence[int], geometry: VitGeometry) -> list[int]:
    """Cap each r at what its layer can merge, given the tokens left by earlier layers."""
    if len(schedule) != geometry.depth:
        raise ValueError(f"schedule has {len(schedule)} entries, the model has {geometry.depth} layers")
    capped, tokens = [], geometry.num_tokens
    for r in schedule:
        if isinstance(r, bool) or int(r) != r or r < 0:
            raise ValueError(f"every r must be a whole number >= 0, got {r!r}")
        r = min(int(r), max_merge(tokens, geometry.num_protected))
        capped.append(r)
        tokens -= r
    return capped


def tokens_per_layer(schedule: Sequence[int], geometry: VitGeometry) -> list[int]:
    """Tokens entering each block, then the tokens leaving the last one (depth + 1 values)."""
    tokens = [geometry.num_tokens]
    for r in cap_schedule(schedule, geometry):
        tokens.append(tokens[-1] - r)
    return tokens


def forward_flops(schedule: Sequence[int], geometry: VitGeometry, method: Method = "tome") -> int:
    """Exact FLOPs of one image's forward (matmuls and convolutions, 2 per MAC)."""
    flops = 2 * geometry.patch_macs + 2 * geometry.head_macs
    tokens = geometry.num_tokens
    for layer, r in enumerate(cap_schedule(schedule, geometry)):
        flops += 2 * tokens * geometry.attn_macs[layer] + 4 * tokens * tokens * geometry.attn_dim
        if r > 0 and method != "none":
            flops += 2 * math.ceil(tokens / 2) * (tokens // 2) * geometry.head_dim  # matching
            flops += 4 * r * geometry.dim if method == "pyra" else 0  # PYRA gates
            tokens -= r
        flops += 2 * tokens * geometry.mlp_macs[layer]
    return flops


def flops_ratio(schedule: Sequence[int], geometry: VitGeometry, method: Method = "tome") -> float:
    """Uncompressed FLOPs / FLOPs at `schedule`."""
    return forward_flops([0] * geometry.depth, geometry, "none") / forward_flops(schedule, geometry, method)


def inflection_schedule(r: int, inflection: float, depth: int) -> list[int]:
    """ToMe's linear schedule: from r * (1 - inflection) to r * (1 + inflection), mean ~r."""
    if not -1.0 <= inflection <= 1.0:
        raise ValueError(f"inflection must be in [-1, 1], got {inflection}")
    first = int(r * (1.0 - inflection))
    last = 2 * r - first
    step = (last - first) / max(depth - 1, 1)
    return [int(first + step * i) for i in range(depth)]


def _closest(candidates: list[list[int]], target: float, geometry: VitGeometry) -> list[int]:
    return min(candidates, key=lambda s: abs(flops_ratio(s, geometry) - target))


def constant_for_ratio(target: float, geometry: VitGeometry) -> list[int]:
    """The constant-r schedule whose FLOPs ratio is closest to `target`."""
    top = max_merge(geometry.num_tokens, geometry.num_protected)
    return _closest([cap_schedule([r] * geometry.depth, geometry) for r in range(top + 1)], target, geometry)


def _interpolate(profile: Sequence[float], depth: int) -> list[float]:
    """Resample a per-layer profile to `depth` layers, linearly in relative depth."""
    out = []
    for i in range(depth):
        t = i * (len(profile) - 1) / max(depth - 1, 1)
        lo = int(math.floor(t))
        hi = min(lo + 1, len(profile) - 1)
        out.append(profile[lo] + (profile[hi] - profile[lo]) * (t - lo))
    return out


def front_loaded_for_ratio(target: float, geometry: VitGeometry) -> list[int]:
    """A decreasing schedule shaped like ViT-B/16 "high", scaled to the FLOPs ratio closest to `target`."""
    reference = _REFERENCE[(12, 197)]["high"]
    profile = _interpolate([r / reference[0] for r in reference], geometry.depth)
    top = max_merge(geometry.num_tokens, geometry.num_protected)
    candidates = []
    for step in range(4 * top + 1):
        scale = step / 4
        candidates.append(cap_schedule([max(round(scale * p), 0) for p in profile], geometry))
    return _closest(candidates, target, geometry)


@lru_cache(maxsize=None)
def named_target_ratio(name: str) -> float:
    """FLOPs ratio of the reference ViT-B/16 schedule `name` ("low" ~2.0, "high" ~3.5)."""
    geometry = vit_b16_geometry()
    return flops_ratio(_REFERENCE[(12, 197)][name], geometry)


def resolve_schedule(spec: ScheduleSpec, geometry: VitGeometry) -> list[int]:
    """Turn any schedule spec into one capped r per layer."""
    depth = geometry.depth
    if isinstance(spec, bool):
        raise ValueError(f"not a schedule: {spec!r}")
    if isinstance(spec, str):
        name = spec.strip().lower()
        if name not in ("low", "high"):
            raise ValueError(f"unknown schedule name {spec!r}; use 'low', 'high', an int, a list or a FLOPs ratio")
        reference = _REFERENCE.get((depth, geometry.num_tokens))
        if reference is not None and geometry.num_protected == 1:
            return cap_schedule(reference[name], geometry)
        target = named_target_ratio(name)
        return constant_for_ratio(target, geometry) if name == "low" else front_loaded_for_ratio(target, geometry)
    if isinstance(spec, int):
        if spec < 0:
            raise ValueError(f"r must be >= 0, got {spec}")
        return cap_schedule([spec] * depth, geometry)
    if isinstance(spec, float):
        if not spec >= 1.0:
            raise ValueError(f"a target FLOPs ratio must be >= 1.0 (1.0 = uncompressed), got {spec}")
        return front_loaded_for_ratio(spec, geometry)
    if isinstance(spec, tuple) and len(spec) == 2 and isinstance(spec[1], float):
        return cap_schedule(inflection_schedule(int(spec[0]), spec[1], depth), geometry)
    return cap_schedule(list(spec), geometry)


def parse_schedule(text: str) -> ScheduleSpec:
    """Parse a command-line schedule: "low", "high", "8", "8,8,4", "[8, 4]", "2.5" (FLOPs ratio), "8@-0.5"."""
    text = text.strip()
    if text.lower() in ("low", "high"):
        return text.lower()
    try:
        if "@" in text:
            r, inflection = text.split("@", 1)
            return (int(r), float(inflection))
        if "," in text or text.startswith("["):
            return [int(v) for v in text.strip("[]").split(",") if v.strip()]
        if "." in text:
            return float(text)
        return int(text)
    except ValueError:
        raise ValueError(
            f"cannot read schedule {text!r}; use low, high, an int r, a list like 8,8,4, "
            "a FLOPs ratio like 2.5, or r@inflection like 8@-0.5"
        ) from None
