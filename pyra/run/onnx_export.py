"""A trained model as one ONNX file: LoRA folded into the weights, merging at one fixed schedule.

    info = export_run(run_dir, "model.onnx")                    # the run's own schedule, batch 1
    info = export_run(run_dir, "model.onnx", schedule="low", dynamic_batch=True)
    logits = onnx_logits("model.onnx", images)                # images [B, 3, H, W], normalised

A schedule fixes the tokens of every layer, so the graph has static shapes (only the batch may
vary). The merge is written with gathers, scatters and TopK, all of which ONNX has
(`pyra.method.merge`). The file's metadata (keys under `pyra.`) records what is needed to run it
without this package: class names, image size, mean and std, the schedule and the method.
Exported with torch's dynamo exporter (needs `onnxscript`); checked in onnxruntime against the
torch model on random images, merges included (`pyra.run.onnx_check`), before it is written;
`export_run` then times the file against the torch model (`pyra.run.onnx_speed`).
"""
from __future__ import annotations

import contextlib
import io
import json
import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from onnx_ir.passes.common import RemoveUnusedNodesPass
from torch import nn

from pyra.backbones.factory import data_config
from pyra.method.lora import merge_lora
from pyra.method.patch import geometry, set_schedule
from pyra.method.schedule import Method, ScheduleSpec, resolve_schedule
from pyra.run.checkpoint import load_run
from pyra.run.cpu_layout import column_major_linears
from pyra.run.onnx_check import ExportCheck, WithMatchings, check_outputs, matching_names
from pyra.run.onnx_speed import ExportSpeed, measure_export_speed

__all__ = ["ExportInfo", "export_model", "export_run", "onnx_logits", "onnx_metadata", "OPSET"]

OPSET = 18
INPUT_NAME, OUTPUT_NAME = "image", "logits"


@dataclass(frozen=True)
class ExportInfo:
    """What was written, and how closely onnxruntime reproduced the torch model."""

    path: str
    bytes: int
    method: str
    schedule: list[int]
    batch: Optional[int]  # None: any batch size
    img_size: int
    classes: list[str]
    check: ExportCheck  # onnxruntime vs torch on the check images
    speed: Optional[ExportSpeed] = None  # the file against the torch model, timed on this machine (export_run)

    def to_dict(self) -> dict:
        """Flat: the check's fields beside the file's; the timing under "speed"."""
        fields = asdict(self)
        check = fields.pop("check")
        return {**fields, **check, "speed": self.speed.to_dict() if self.speed is not None else None}


def export_model(model: nn.Module, path: str | Path, *, classes: list[str], batch: int = 1,
                 dynamic_batch: bool = False, check_images: int = 3) -> ExportInfo:
    """Write `model` (patched, at the schedule it should run; LoRA merged or absent) to `path`, after
    checking it on at least `check_images` random images.

    Raises ValueError, writing nothing, when the check (`pyra.run.onnx_check`) finds the export wrong.
    """
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    path = Path(path)
    model = model.eval()
    img_size = model.patch_embed.img_size[0]
    traced = check_images if dynamic_batch else batch  # a batch of 1 would be traced as a constant 1
    example = torch.zeros(traced, 3, img_size, img_size)
    shapes = ({0: torch.export.Dim("batch", min=1, max=4096)},) if dynamic_batch else None
    with torch.no_grad(), contextlib.redirect_stdout(io.StringIO()):  # the exporter prints its steps
        program = torch.onnx.export(WithMatchings(model).eval(), (example,), dynamo=True, opset_version=OPSET,
                                    input_names=[INPUT_NAME], output_names=[OUTPUT_NAME, *matching_names(model)],
                                    dynamic_shapes=shapes, verbose=False)
    count = traced * math.ceil(check_images / traced)  # a fixed batch runs the images in several calls
    images = torch.randn(count, 3, img_size, img_size, generator=torch.Generator().manual_seed(0))
    outputs = _run(program.model_proto.SerializeToString(), images.numpy(), traced)
    check = check_outputs(model, images, outputs)
    if check.problem() is not None:
        raise ValueError(f"{check.problem()}; nothing was written")
    del program.model.graph.outputs[1:]  # the matchings were for the check; the file returns the logits
    RemoveUnusedNodesPass()(program.model)
    config = model.merge_config if hasattr(model, "merge_config") else None
    method, schedule = (config.method, list(config.schedule)) if config is not None else ("none", [0] * len(model.blocks))
    program.model.metadata_props.update(_metadata(model, classes, method, schedule, None if dynamic_batch else batch))
    program.model.doc_string = ("Exported by pyra: a timm Vision Transformer with LoRA merged and token merging at a "
                                "fixed schedule.")
    program.save(str(path), external_data=False)
    if not np.array_equal(_run(str(path), images.numpy(), traced)[0], outputs[0]):  # the file is the graph checked
        path.unlink()
        raise ValueError("the written file's logits differ from the checked graph's; nothing was written")
    return ExportInfo(str(path), path.stat().st_size, method, schedule, None if dynamic_batch else batch, img_size,
                      list(classes), check)


def export_run(run_dir: str | Path, path: str | Path, *, schedule: Optional[ScheduleSpec] = None,
               method: Optional[Method] = None, batch: int = 1, dynamic_batch: bool = False) -> ExportInfo:
    """Export a run folder's model at `schedule` (default: the one it was trained for) with `method`
    (default: its own; "none" or schedule 0 exports it without merging), then time the file against the
    torch model (column-major weights, as `compare` times it) on the exported batch (1 when dynamic)."""
    model, config = load_run(run_dir)
    applied = list(config.schedule) if schedule is None else resolve_schedule(schedule, geometry(model))
    chosen = method or config.method
    set_schedule(model, applied, method=chosen if any(applied) else "none")
    info = export_model(merge_lora(model), path, classes=list(config.classes), batch=batch,
                        dynamic_batch=dynamic_batch)
    speed = measure_export_speed(column_major_linears(model), info.path, info.batch or 1)
    return replace(info, speed=speed)


def _metadata(model: nn.Module, classes: list[str], method: str, schedule: list[int],
              batch: Optional[int]) -> dict[str, str]:
    """The file's `pyra.` metadata: each value JSON-encoded."""
    data = data_config(model)
    props = {"classes": classes, "img_size": model.patch_embed.img_size[0], "mean": list(data["mean"]),
             "std": list(data["std"]), "method": method, "schedule": schedule, "batch": batch,
             "input": f"{INPUT_NAME}: float32 [batch, 3, H, W], RGB scaled to [0, 1], then (x - mean) / std",
             "output": f"{OUTPUT_NAME}: float32 [batch, classes], softmax gives probabilities"}
    return {f"pyra.{key}": json.dumps(value) for key, value in props.items()}


def onnx_metadata(path: str | Path) -> dict:
    """The `pyra.` metadata of an exported file, decoded (classes, img_size, mean, std, ...)."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    props = session.get_modelmeta().custom_metadata_map
    return {key.removeprefix("pyra."): json.loads(value) for key, value in props.items() if key.startswith("pyra.")}


def onnx_logits(path: str | Path, images: np.ndarray) -> np.ndarray:
    """[B, 3, H, W] float32 normalised images -> [B, classes] logits, in onnxruntime on the CPU."""
    return _run(str(path), images)[0]


def _run(model: str | bytes, images: np.ndarray, batch: Optional[int] = None) -> list[np.ndarray]:
    """Every output of an ONNX model (a path or its bytes) on [B, 3, H, W] images, in onnxruntime on the CPU,
    `batch` images per call (default: all in one)."""
    import onnxruntime

    session = onnxruntime.InferenceSession(model, providers=["CPUExecutionProvider"])
    step = batch or len(images)
    calls = [session.run(None, {INPUT_NAME: images[i:i + step].astype(np.float32)}) for i in range(0, len(images), step)]
    return [np.concatenate(parts) for parts in zip(*calls)]
