"""Which parameters train (LoRA, PYRA, classifier head) and how many there are."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

from torch import nn

ParameterKind = Literal["lora", "pyra", "head", "backbone"]


def parameter_kind(name: str) -> ParameterKind:
    """Classify a parameter by its name in `model.named_parameters()`."""
    parts = name.split(".")
    if any(p.startswith("lora_") for p in parts):
        return "lora"
    if "pyra" in parts:
        return "pyra"
    if parts[0] in ("head", "head_dist"):
        return "head"
    return "backbone"


def freeze_all_but_adapters(model: nn.Module) -> None:
    """requires_grad only for LoRA, PYRA and head parameters."""
    for name, param in model.named_parameters():
        param.requires_grad_(parameter_kind(name) != "backbone")


@dataclass(frozen=True)
class ParameterReport:
    """Parameter counts by kind; `percent_of_backbone` = trainable / frozen backbone * 100."""

    lora: int
    pyra: int
    head: int
    trainable: int
    backbone: int
    percent_of_backbone: float

    def to_dict(self) -> dict:
        return asdict(self)


def parameter_report(model: nn.Module) -> ParameterReport:
    counts = {"lora": 0, "pyra": 0, "head": 0, "backbone": 0}
    trainable = 0
    for name, param in model.named_parameters():
        counts[parameter_kind(name)] += param.numel()
        trainable += param.numel() if param.requires_grad else 0
    backbone = counts["backbone"]
    return ParameterReport(
        lora=counts["lora"],
        pyra=counts["pyra"],
        head=counts["head"],
        trainable=trainable,
        backbone=backbone,
        percent_of_backbone=100.0 * trainable / backbone if backbone else float("nan"),
    )
