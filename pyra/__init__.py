"""PYRA: LoRA + token merging with learned re-activation for timm Vision Transformers.

The core API patches a timm model in place (see README.md); the rest builds on it:
`pyra.backbone` (pretrained backbones, offline default), `pyra.data` (datasets),
`pyra.train`, `pyra.evaluate`, `pyra.compare`, `pyra.checkpoint`, `pyra.vis`, `pyra.stats`.
"""
from pyra.lora import LoRALinear, add_lora, merge_lora, unmerge_lora
from pyra.modulation import TokenModulator
from pyra.parameters import ParameterReport, parameter_report
from pyra.patch import (
    MergeConfig,
    UnsupportedModelError,
    geometry,
    layer_records,
    patch,
    schedule_flops,
    set_schedule,
    token_sources,
)
from pyra.schedule import parse_schedule, resolve_schedule, tokens_per_layer

__version__ = "0.1.0"

__all__ = [
    "LoRALinear", "add_lora", "merge_lora", "unmerge_lora", "TokenModulator", "ParameterReport",
    "parameter_report", "MergeConfig", "UnsupportedModelError", "geometry", "layer_records", "patch",
    "schedule_flops", "set_schedule", "token_sources", "parse_schedule", "resolve_schedule", "tokens_per_layer",
]
