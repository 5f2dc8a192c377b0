"""PYRA: LoRA + token merging with learned re-activation for timm Vision Transformers.

The core API patches a timm model in place (see README.md); `save_run` / `load_run` store and
rebuild a trained one. The packages, by concern:

    pyra.method      the paper's method: merging, modulation, LoRA, schedules, elastic levels
    pyra.backbones   pretrained backbones (the offline default included)
    pyra.data        datasets from zips, folders and samples; limits on untrusted input
    pyra.run         training, metrics, speed, one run, comparisons, run folders
    pyra.report      statistics, plots, token maps and layer traces, benchmark tables
    pyra.cli         `python -m pyra ...`
"""
from pyra.method.lora import LoRALinear, add_lora, merge_lora, unmerge_lora
from pyra.method.modulation import TokenModulator
from pyra.method.parameters import ParameterReport, parameter_report
from pyra.method.patch import (
    MergeConfig,
    UnsupportedModelError,
    geometry,
    layer_records,
    patch,
    schedule_flops,
    set_schedule,
    token_sources,
)
from pyra.method.schedule import parse_schedule, resolve_schedule, tokens_per_layer
from pyra.run.checkpoint import load_run, save_run

__version__ = "0.1.0"

__all__ = [
    "LoRALinear", "add_lora", "merge_lora", "unmerge_lora", "TokenModulator", "ParameterReport",
    "parameter_report", "MergeConfig", "UnsupportedModelError", "geometry", "layer_records", "patch",
    "schedule_flops", "set_schedule", "token_sources", "parse_schedule", "resolve_schedule", "tokens_per_layer",
    "load_run", "save_run",
]
