"""How to rebuild a trained model: `RunConfig` (stored as a run's config.json) and `build_model`,
the one construction for training and loading.

    model = build_model(config)                 # backbone, LoRA, merging, head: as configured
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, Optional, get_args

import timm
import torch
from torch import nn

from pyra.backbones.factory import backbone_fingerprint, create_backbone
from pyra.method.lora import LoraTarget, add_lora
from pyra.method.patch import patch
from pyra.method.schedule import METHODS
from pyra.rng import seeded
from pyra.run.recipes import DEFAULT_RECIPE
from pyra.run.train import TrainConfig

__all__ = ["CheckpointError", "RunConfig", "library_versions", "build_model"]


_LORA_TARGETS = get_args(LoraTarget)


class CheckpointError(ValueError):
    """A run folder cannot be read; the message names the file and what to do."""


def library_versions() -> dict[str, str]:
    """Versions of the libraries that shape the numbers of a run."""
    return {"torch": torch.__version__, "timm": timm.__version__, "pyra": pyra_version()}


def pyra_version() -> str:
    import importlib.metadata

    import pyra

    version = getattr(pyra, "__version__", None)
    if version:
        return str(version)
    try:
        return importlib.metadata.version("pyra-studio")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


@dataclass(frozen=True)
class RunConfig:
    """Everything needed to rebuild a trained model from its adapter, stored as config.json."""

    backbone: str  # as given: "default" (shipped DINOv2 ViT-S/14), a timm name, or "random:NAME"
    img_size: int  # input size in pixels
    num_classes: int
    classes: tuple[str, ...]  # class names, index = label
    schedule: tuple[int, ...]  # resolved: tokens merged per block (PYRA modulators are sized by it)
    method: str = "pyra"  # "pyra" | "tome" | "none"
    backbone_fingerprint: str = ""  # of the backbone as created; "" = filled in by save_run from the model
    backbone_weights: Optional[str] = None  # local weights file for `backbone`'s architecture (None: hub / shipped)
    lora_rank: int = DEFAULT_RECIPE.lora_rank
    lora_alpha: Optional[float] = None  # None = lora_rank (scale 1)
    lora_dropout: float = DEFAULT_RECIPE.lora_dropout
    lora_targets: tuple[str, ...] = ("qkv",)
    prop_attn: bool = True  # proportional attention, in training and evaluation
    drop_path_rate: float = DEFAULT_RECIPE.drop_path_rate
    train: TrainConfig = field(default_factory=TrainConfig)
    data_source: str = ""  # zip / folder name or "sample:NAME"
    val_fraction: float = 0.25
    split_seed: int = 0  # the train/val split (see pyra.data.datasets.load_dataset)
    max_per_class: Optional[int] = None
    seed: int = 0  # data split and model construction (LoRA A, PYRA w_r, random-init backbones)
    versions: dict[str, str] = field(default_factory=library_versions)

    def __post_init__(self) -> None:
        for name in ("classes", "schedule", "lora_targets"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if isinstance(self.train, dict):  # from JSON
            recorded = {**TRAIN_FIELDS_ADDED_LATER, **self.train}  # a run saved before a field existed
            object.__setattr__(self, "train", _from_fields(TrainConfig, recorded, "train"))
        checks = [
            (self.method in METHODS, f"method must be one of {METHODS}, got {self.method!r}"),
            (_whole(self.img_size) and self.img_size >= 1,
             f"img_size must be a whole number of pixels, got {self.img_size!r}"),
            (_whole(self.num_classes) and self.num_classes >= 1, f"num_classes must be >= 1, got {self.num_classes!r}"),
            (not self.classes or len(self.classes) == self.num_classes,
             f"{len(self.classes)} class names for num_classes={self.num_classes}; give one name per class"),
            (all(_whole(r) and r >= 0 for r in self.schedule),
             f"schedule must be whole numbers >= 0, one per block, got {list(self.schedule)}"),
            (_whole(self.lora_rank) and self.lora_rank >= 1, f"lora_rank must be >= 1, got {self.lora_rank!r}"),
            (0.0 <= self.lora_dropout < 1.0, f"lora_dropout must be in [0, 1), got {self.lora_dropout!r}"),
            (set(self.lora_targets) <= set(_LORA_TARGETS) and bool(self.lora_targets),
             f"lora_targets must be among {list(_LORA_TARGETS)}, got {list(self.lora_targets)}"),
            (0.0 <= self.drop_path_rate < 1.0, f"drop_path_rate must be in [0, 1), got {self.drop_path_rate!r}"),
            (0.0 < self.val_fraction < 1.0, f"val_fraction must be between 0 and 1, got {self.val_fraction!r}"),
            (isinstance(self.train, TrainConfig), f"train must be a TrainConfig, got {type(self.train).__name__}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    def to_dict(self) -> dict:
        """JSON-ready: tuples become lists, `train` a dict."""
        data = asdict(self)
        return {key: list(value) if isinstance(value, tuple) else value for key, value in data.items()}

    @classmethod
    def from_dict(cls, data: dict) -> RunConfig:
        """Inverse of `to_dict`; ValueError naming unknown or missing keys (all keys are required)."""
        return _from_fields(cls, data, "run config")


TRAIN_FIELDS_ADDED_LATER = {"micro_batch": None}
"""TrainConfig fields newer than some saved runs, with the value every run before them trained with. Only a
field that cannot change the trained model's outputs belongs here (micro-batches give the same gradients)."""


def _whole(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _from_fields(cls: type, data: Any, what: str) -> Any:
    """cls(**data), refusing unknown and missing keys with a clear ValueError.

    Every field is required, defaults included: `to_dict` writes them all, and silently
    defaulting one (say `prop_attn`) would change the model's outputs without any shape error.
    """
    if not isinstance(data, dict):
        raise ValueError(f"{what} must be a JSON object, got {type(data).__name__}")
    known = {f.name for f in fields(cls)}
    unknown, missing = sorted(set(data) - known), sorted(known - set(data))
    if unknown or missing:
        parts = [f"unknown keys {unknown}" if unknown else "", f"missing keys {missing}" if missing else ""]
        raise ValueError(f"{what}: {'; '.join(p for p in parts if p)}")
    return cls(**data)


# ---------------------------------------------------------------- building


def build_model(config: RunConfig, *, pretrained: bool = True) -> nn.Module:
    """The one construction of a trainable model: backbone -> LoRA -> token merging.

    Construction is seeded by `config.seed` (LoRA A, PYRA w_r; random backbone weights are
    seeded by `create_backbone` itself) without touching the global RNG, so the same config
    gives the same model. The backbone's fingerprint is kept on `model.backbone_fingerprint`
    for `save_run`.

    Args:
        config: the run's configuration.
        pretrained: False builds the backbone with random weights instead of pretrained ones
            (for tests). A run meant to be reloaded should rather name its backbone
            "random:NAME": `load_run` always builds with pretrained weights unless the name says so.
    """
    with seeded(config.seed):
        model = create_backbone(config.backbone, config.num_classes, config.img_size,
                                drop_path_rate=config.drop_path_rate, pretrained=pretrained,
                                weights=config.backbone_weights)
        fingerprint = backbone_fingerprint(model)
        add_lora(model, rank=config.lora_rank, alpha=config.lora_alpha, dropout=config.lora_dropout,
                 targets=config.lora_targets)
        patch(model, method=config.method, schedule=list(config.schedule), prop_attn=config.prop_attn)
    model.backbone_fingerprint = fingerprint
    return model
