"""One training run from data to run folder, and its re-evaluation: what the CLI and compare share."""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Callable, Optional, Sequence

from torch import nn

from pyra.backbones.factory import backbone_structure, data_config, default_img_size
from pyra.data.datasets import DatasetSplit, ImageDataset, ImageRecord, make_transform
from pyra.method.patch import geometry
from pyra.method.schedule import Method, ScheduleSpec, resolve_schedule
from pyra.run.checkpoint import load_metrics, load_run, save_run
from pyra.run.devices import default_device
from pyra.run.metrics import ClassificationReport, classification_report, evaluate
from pyra.run.recipes import DEFAULT_RECIPE
from pyra.run.run_config import RunConfig, build_model
from pyra.run.train import Progress, TrainConfig, TrainResult, train


def model_dataset(model: nn.Module, records: Sequence[ImageRecord]) -> ImageDataset:
    """Records preprocessed the way `model` expects (its own mean/std, its input size)."""
    return ImageDataset(records, make_transform(data_config(model), model.patch_embed.img_size[0]))


def make_run_config(
    data: DatasetSplit,
    *,
    backbone: str = "default",
    backbone_weights: Optional[str] = None,
    img_size: Optional[int] = None,
    method: Method = "pyra",
    schedule: ScheduleSpec = "high",
    lora_rank: int = DEFAULT_RECIPE.lora_rank,
    lora_dropout: float = DEFAULT_RECIPE.lora_dropout,
    drop_path_rate: float = DEFAULT_RECIPE.drop_path_rate,
    train_config: TrainConfig = DEFAULT_RECIPE.train,
    seed: int = 0,
    device: Optional[str] = None,
) -> RunConfig:
    """A RunConfig with the schedule resolved for the backbone's token count."""
    img_size = img_size or default_img_size(backbone, device or default_device())
    structure = backbone_structure(backbone, len(data.classes), img_size)
    resolved = resolve_schedule(schedule if method != "none" else 0, geometry(structure))
    return RunConfig(
        backbone=backbone, backbone_weights=backbone_weights, img_size=img_size,
        num_classes=len(data.classes), classes=tuple(data.classes), schedule=tuple(resolved),
        method=method, lora_rank=lora_rank, lora_dropout=lora_dropout, drop_path_rate=drop_path_rate,
        train=train_config, data_source=data.source,
        val_fraction=data.val_fraction, split_seed=data.split_seed, max_per_class=data.max_per_class, seed=seed,
    )


def train_run(
    data: DatasetSplit,
    config: RunConfig,
    run_dir: Path,
    *,
    on_progress: Optional[Callable[[Progress], None]] = None,
    cancel: Optional[threading.Event] = None,
    device: Optional[str] = None,
    make_parents: bool = True,
) -> tuple[nn.Module, TrainResult, Optional[ClassificationReport]]:
    """Build, train (on `device`, default: the GPU when there is one), evaluate on the
    validation split and save into `run_dir` (`make_parents=False`: its parent must still exist).

    The recorded accuracy is computed exactly as `evaluate_run` recomputes it.
    """
    model = build_model(config).to(device or default_device())
    result = train(model, model_dataset(model, data.train), config.train,
                   val_set=model_dataset(model, data.val), on_progress=on_progress, cancel=cancel)
    report = None
    metrics: dict = {"status": result.status, "message": result.message, "seconds": result.seconds,
                     "steps": result.steps, "history": result.history, "epochs": result.epochs,
                     "elastic": result.elastic,
                     "head_start": result.head_start.to_dict() if result.head_start else None}
    if result.status == "completed":  # the last epoch's validation: the final weights, at the target
        report = classification_report(result.validation, data.classes)
        metrics["validation"] = report.to_dict()
    save_run(run_dir, model, config, metrics, make_parents=make_parents)
    return model, result, report


def evaluate_run(
    run_dir: Path,
    data: DatasetSplit,
    *,
    schedule: Optional[ScheduleSpec] = None,
    method: Optional[Method] = None,
    with_features: bool = False,
) -> tuple[ClassificationReport, dict, nn.Module]:
    """Re-evaluate a run folder on `data`'s validation split, at its own or another schedule.

    Returns the report, the metrics recorded at training time, and the loaded model (back at
    its trained schedule).
    """
    model, config = load_run(run_dir)
    model.to(default_device())
    if list(data.classes) != list(config.classes):
        raise ValueError(
            f"{run_dir}: trained on classes {list(config.classes)}, the data has {list(data.classes)}; "
            "evaluate on the dataset the run was trained on"
        )
    if schedule is not None:
        schedule = resolve_schedule(schedule, geometry(model))
    report, _ = evaluate(model, model_dataset(model, data.val), data.classes, schedule=schedule, method=method,
                         with_features=with_features, batch_size=config.train.forward_batch)  # as it was trained
    return report, load_metrics(run_dir), model
