"""The settings a visitor types, validated: every raw field value becomes a typed value or a
ValueError that names the field, the limit and the fix. No Gradio, no tensors.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any, Optional

from pyra.method.schedule import parse_schedule
from pyra.run.comparison import PROTOCOLS, CompareConfig
from pyra.run.recipes import DEFAULT_RECIPE
from pyra.run.train import MAX_SEED
from pyra_app.budget import Budget


@dataclass(frozen=True)
class TrainSettings:
    """The Train tab's controls, as typed values."""

    backbone: str = "default"
    weights: Optional[str] = None  # uploaded weights file for a timm architecture
    img_size: Optional[int] = None  # None: the backbone's default
    lora_rank: int = DEFAULT_RECIPE.lora_rank
    epochs: int = DEFAULT_RECIPE.train.epochs
    batch_size: int = DEFAULT_RECIPE.train.batch_size
    lr: float = DEFAULT_RECIPE.train.lr
    pyra_lr: float = DEFAULT_RECIPE.train.pyra_lr
    schedule: str = "high"  # as typed: low / high / r / r1,r2,... / FLOPs ratio (see pyra.method.schedule.parse_schedule)
    seeds: tuple[int, ...] = (0,)
    num_levels: int = 5
    bench_repeats: int = 5
    protocol: str = "elastic"  # see pyra.run.comparison: "elastic" or "per-level"
    validate_every_epoch: bool = True  # False: validate each model after its last epoch only
    head_start_c: float = DEFAULT_RECIPE.train.head_start_c  # the head start's inverse L2 strength (TrainConfig)


TRAIN_FIELDS = tuple(field.name for field in fields(TrainSettings))
"""The Train tab's controls in the order the UI lists them and the /train API takes them."""


def parse_seeds(text: str) -> tuple[int, ...]:
    """ "0" / "0, 1, 2" / "0 1 2" -> (0, 1, 2); at least one, no duplicates."""
    parts = [p for p in str(text).replace(",", " ").split() if p]
    try:
        seeds = tuple(int(p) for p in parts)
    except ValueError:
        raise ValueError(f"seeds: {text!r} is not a list of whole numbers; write e.g. 0 or 0, 1, 2") from None
    if not seeds:
        raise ValueError("seeds: give at least one seed, e.g. 0 (or 0, 1, 2 for an interval over seeds)")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds: {text!r} repeats a seed; give distinct seeds")
    if not all(0 <= seed <= MAX_SEED for seed in seeds):
        raise ValueError(f"seeds: each seed must be a whole number from 0 to {MAX_SEED}")
    return seeds


def level_fractions(count: int) -> tuple[float, ...]:
    """`count` evenly spaced fractions of the target schedule, from 0 (uncompressed) to 1."""
    count = int(count)
    if count < 2:
        raise ValueError(f"compression levels: need at least 2 (uncompressed and the target), got {count}")
    return tuple(round(i / (count - 1), 4) for i in range(count))


MAX_TEXT = 200  # characters of a text field (backbone, schedule); seeds may be longer
MAX_SEEDS_TEXT = 2000
MAX_LORA_RANK, MAX_EPOCHS, MAX_LEVELS, MAX_BENCH_REPEATS = 32, 50, 9, 20  # the Train tab's slider ranges


def _finite(value: Any, name: str) -> float:
    """A finite number from a field's raw value (a number or its text), or ValueError naming the field."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)) or len(str(value)) > 40:
        raise ValueError(f"{name}: {_shown(value)} is not a number")
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        raise ValueError(f"{name}: {_shown(value)} is not a number") from None
    if not math.isfinite(number):
        raise ValueError(f"{name}: must be a finite number, got {_shown(value)}")
    return number


def _shown(value: Any) -> str:
    """A raw value as a message may quote it: short, and never a whole object dump."""
    text = repr(value) if isinstance(value, (int, float, str)) else f"a {type(value).__name__}"
    return text if len(text) <= 40 else text[:37] + "..."


def _positive_int(value: Any, name: str, low: int = 1, high: Optional[int] = None, fix: str = "") -> int:
    number = _finite(value, name)
    if number != int(number) or number < low:
        raise ValueError(f"{name}: must be a whole number >= {low}, got {_shown(value)}")
    if high is not None and number > high:
        raise ValueError(f"{name}: {_shown(value)} is more than the limit of {high}{fix}")
    return int(number)


def _positive_float(value: Any, name: str) -> float:
    number = _finite(value, name)
    if number <= 0:
        raise ValueError(f"{name}: must be a positive number such as 1e-3, got {_shown(value)}")
    return number


def _text(value: Any, name: str, default: str, limit: int = MAX_TEXT) -> str:
    if value is None or value == "":
        return default
    if not isinstance(value, str):
        raise ValueError(f"{name}: expected a text, got {_shown(value)}")
    if len(value) > limit:
        raise ValueError(f"{name}: at most {limit} characters, got {len(value)}")
    return value.strip() or default


def choice_index(value: Any, count: int, name: str) -> int:
    """A 0-based position among `count` choices, from a raw dropdown or slider value."""
    index = _positive_int(value, name, low=0)
    if index >= count:
        raise ValueError(f"{name}: choose one of the {count} in the list")
    return index


def slider_index(value: Any, low: int, high: int, name: str) -> int:
    """A raw slider value as a whole number, clamped to [low, high] (the slider may span more than a result has)."""
    return min(max(int(round(_finite(value, name))), low), high)


def data_settings(max_per_class: Any, val_fraction: Any) -> tuple[Optional[int], float]:
    """The Data tab's two numbers: (images per class cap or None, validation share)."""
    cap = None if max_per_class in (None, "", 0, 0.0) else _positive_int(max_per_class, "max images per class", low=2)
    fraction = _finite(0.25 if val_fraction in (None, "") else val_fraction, "validation share")
    if not 0.05 <= fraction <= 0.9:
        raise ValueError(f"validation share: between 0.05 and 0.9, got {_shown(val_fraction)}")
    return cap, fraction


def train_settings(values: Mapping[str, Any], budget: Budget = Budget()) -> TrainSettings:
    """Validate the raw control values (by `TrainSettings` field name) against the field ranges and
    `budget`; ValueError names the control and the fix."""
    raw = {name: values.get(name) for name in TRAIN_FIELDS}
    img_size, weights = raw["img_size"], raw["weights"]
    size = None if img_size in (None, "", 0, 0.0) else _positive_int(
        img_size, "image size", low=8, high=budget.max_img_size, fix=" px (raise PYRA_MAX_IMG_SIZE to allow more)")
    if weights is not None and not isinstance(weights, str):
        raise ValueError(f"weights file: expected an uploaded file, got {_shown(weights)}")
    return TrainSettings(
        backbone=_text(raw["backbone"], "backbone", "default"),
        weights=weights or None,
        img_size=size,
        lora_rank=_positive_int(raw["lora_rank"], "LoRA rank", high=MAX_LORA_RANK),
        epochs=_positive_int(raw["epochs"], "epochs", high=MAX_EPOCHS),
        batch_size=_positive_int(raw["batch_size"], "batch size", high=budget.max_batch,
                                 fix=" (raise PYRA_MAX_BATCH to allow more)"),
        lr=_positive_float(raw["lr"], "learning rate"),
        pyra_lr=_positive_float(raw["pyra_lr"], "PYRA learning rate"),
        schedule=_text(raw["schedule"], "target compression", "high"),
        seeds=parse_seeds(_text(raw["seeds"], "seeds", "0", limit=MAX_SEEDS_TEXT)),
        num_levels=_positive_int(raw["num_levels"], "compression levels", low=2, high=MAX_LEVELS),
        bench_repeats=_positive_int(raw["bench_repeats"], "speed measurement repeats", high=MAX_BENCH_REPEATS),
        protocol=_protocol(values.get("protocol", TrainSettings.protocol)),
        validate_every_epoch=_flag(values.get("validate_every_epoch", TrainSettings.validate_every_epoch),
                                   "validate after every epoch"),
        head_start_c=_positive_float(values.get("head_start_c", TrainSettings.head_start_c), "head start C"),
    )


def control_values(settings: TrainSettings) -> tuple:
    """`settings` as the Train tab's controls show them, in `TRAIN_FIELDS` order."""
    shown = {"weights": None, "img_size": settings.img_size or 0, "seeds": ", ".join(map(str, settings.seeds))}
    return tuple(shown.get(name, getattr(settings, name)) for name in TRAIN_FIELDS)


def _protocol(value: Any) -> str:
    if not isinstance(value, str) or value not in PROTOCOLS:
        raise ValueError(f"training protocol: choose one of {', '.join(PROTOCOLS)}, got {value!r}")
    return str(value)


def _flag(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{name}: tick it or leave it empty (true or false), got {_shown(value)}")
    return value


def compare_config(settings: TrainSettings) -> CompareConfig:
    """A `pyra.run.comparison.CompareConfig` from validated settings (ValueError on a bad schedule)."""
    if settings.weights and settings.backbone == "default":
        raise ValueError("a weights file needs the timm architecture it was saved from as the backbone, "
                         "e.g. vit_small_patch16_224 (not 'default')")
    levels = level_fractions(settings.num_levels)
    try:
        schedule = parse_schedule(settings.schedule)
    except ValueError as error:
        raise ValueError(f"target compression: {error}") from None
    return CompareConfig(
        backbone=settings.backbone,
        weights=settings.weights,
        img_size=settings.img_size,
        schedule=schedule,
        lora_rank=settings.lora_rank,
        lora_dropout=DEFAULT_RECIPE.lora_dropout,
        drop_path_rate=DEFAULT_RECIPE.drop_path_rate,
        train=replace(DEFAULT_RECIPE.train, epochs=settings.epochs, batch_size=settings.batch_size, lr=settings.lr,
                      pyra_lr=settings.pyra_lr, eval_every_epoch=settings.validate_every_epoch,
                      head_start_c=settings.head_start_c),
        seeds=settings.seeds,
        levels=levels,
        protocol=settings.protocol,
        bench_repeats=settings.bench_repeats,
    )
