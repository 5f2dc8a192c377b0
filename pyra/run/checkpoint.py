"""A run on disk: `config.json` (how to rebuild the model), `adapter.safetensors` (the trained
LoRA, PYRA and head tensors, nothing else) and `metrics.json`.

    model = build_model(config)                 # the one construction, for training and loading
    train(model, train_set, config.train)
    save_run(run_dir, model, config, metrics)
    model, config = load_run(run_dir)          # same logits as the saved model

Only safetensors and JSON are ever read: no pickle. Every file is written atomically
(temp file in the run folder, fsync, os.replace), and nothing is written outside the run folder.
A run folder is never a mix of two saves: see `save_run`. A full disk raises `DiskFullError`.
"""
from __future__ import annotations

import glob
import json
import os
from dataclasses import replace
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save as safetensors_bytes
from torch import Tensor, nn

from pyra.files import fsync_folder, new_temp, write_temp
from pyra.method.parameters import parameter_kind
from pyra.run.run_config import CheckpointError, RunConfig, build_model, pyra_version

__all__ = [
    "adapter_state", "save_run", "load_config", "load_run", "load_metrics", "CONFIG_FILE", "ADAPTER_FILE",
    "METRICS_FILE"
]


CONFIG_FILE = "config.json"
ADAPTER_FILE = "adapter.safetensors"
METRICS_FILE = "metrics.json"
RUN_FILES = (ADAPTER_FILE, METRICS_FILE, CONFIG_FILE)  # the order save_run gives them their names


def adapter_state(model: nn.Module) -> dict[str, Tensor]:
    """The trained tensors (LoRA, PYRA, head), as CPU copies.

    Merging LoRA only changes the frozen base weights, never these, so the state is the same
    whether or not `pyra.merge_lora` was called.
    """
    return {key: value.detach().to("cpu", copy=True).contiguous()
            for key, value in model.state_dict().items() if parameter_kind(key) != "backbone"}


# ---------------------------------------------------------------- saving


def save_run(run_dir: str | Path, model: nn.Module, config: RunConfig, metrics: Optional[dict] = None,
             make_parents: bool = True) -> RunConfig:
    """Write `adapter.safetensors`, `metrics.json`, then `config.json` (last: it marks a complete run).

    `make_parents=False` creates `run_dir` only inside an existing parent (FileNotFoundError otherwise).

    `config.backbone_fingerprint` is taken from the model built by `build_model` when empty;
    a config whose fingerprint disagrees with the model's is refused. With `metrics=None` an
    existing metrics.json is kept (an empty one is written otherwise). Returns the config written.

    Saving over an existing run is safe against the process being killed, or the disk filling
    up, at any moment: the folder then holds the old run, the new one, or no config.json (an
    incomplete run that `load_run` refuses by name), never the adapter of one save with the
    config of another. Temporary files left by an interrupted save are removed. One process at
    a time may save into a run folder.
    """
    config = _with_fingerprint(model, config)
    if getattr(model, "num_classes", config.num_classes) != config.num_classes:
        raise ValueError(f"the model has {model.num_classes} classes, the config {config.num_classes}; "
                         "save the config the model was built from")
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=make_parents, exist_ok=True)
    _remove_temp_files(run_dir, RUN_FILES)
    adapter = safetensors_bytes(adapter_state(model), metadata={"format": "pt", "pyra": pyra_version()})
    files = {ADAPTER_FILE: adapter}
    if metrics is not None or not (run_dir / METRICS_FILE).is_file():
        files[METRICS_FILE] = _json_bytes(metrics or {})
    files[CONFIG_FILE] = _json_bytes(config.to_dict())
    _replace_run_files(run_dir, files)
    return config


def _replace_run_files(run_dir: Path, files: dict[str, bytes]) -> None:
    """Give `files` (config.json last) their names in `run_dir` without ever mixing two saves.

    Every file is first written and fsynced under a temporary name, which is where a full disk
    fails, before anything of the old run changed. Then the old config.json is moved aside (the
    folder reads as incomplete), the files take their names, config.json last, and the old
    config is deleted.
    """
    temps = []
    try:
        staged = {}
        for name, data in files.items():
            staged[name] = write_temp(run_dir / name, data)
            temps.append(staged[name])
        if (run_dir / CONFIG_FILE).exists():
            retired = new_temp(run_dir / CONFIG_FILE)
            temps.append(retired)
            os.replace(run_dir / CONFIG_FILE, retired)
        for name, temp in staged.items():
            os.replace(temp, run_dir / name)
        fsync_folder(run_dir)
    finally:  # after success only the retired config is left; after a failure, every temp file
        for temp in temps:
            temp.unlink(missing_ok=True)


def _with_fingerprint(model: nn.Module, config: RunConfig) -> RunConfig:
    built = getattr(model, "backbone_fingerprint", "")
    if config.backbone_fingerprint and built and config.backbone_fingerprint != built:
        raise ValueError(f"config.backbone_fingerprint {config.backbone_fingerprint} differs from the model's "
                         f"backbone ({built}); save the config the model was built from")
    if not (config.backbone_fingerprint or built):
        raise ValueError("no backbone fingerprint: build the model with pyra.run.run_config.build_model, or set "
                         "config.backbone_fingerprint = backbone_fingerprint(backbone) before adding LoRA")
    return config if config.backbone_fingerprint else replace(config, backbone_fingerprint=built)


def _json_bytes(data: dict) -> bytes:
    return (json.dumps(data, indent=2, default=_json_default) + "\n").encode()


def _json_default(value: Any) -> Any:
    """numpy / torch scalars and arrays -> plain Python."""
    if isinstance(value, (np.generic, np.ndarray)):
        return value.tolist()
    if isinstance(value, Tensor):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot store a {type(value).__name__} in JSON")


def _temp_files(folder: Path, names: tuple[str, ...]) -> list[Path]:
    """Temporary files of `names` in `folder` (left there by an interrupted write)."""
    return [temp for name in names for temp in folder.glob(f".{glob.escape(name)}.*.tmp")]


def _remove_temp_files(folder: Path, names: tuple[str, ...]) -> None:
    for temp in _temp_files(folder, names):
        temp.unlink(missing_ok=True)


def _has_run_files(folder: Path) -> bool:
    """The folder holds a run file or a temporary one (it may lack config.json)."""
    return any((folder / name).is_file() for name in RUN_FILES) or bool(_temp_files(folder, RUN_FILES))


# ---------------------------------------------------------------- loading


def load_config(run_dir: str | Path) -> RunConfig:
    """Read `config.json` of a run; CheckpointError naming the file and the fix."""
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file() and _has_run_files(path.parent):
        raise CheckpointError(f"{path}: not found, but other files of a run are: this run is incomplete (its save "
                              "was interrupted); train or save it again")
    data = _read_json(path, "is this a run folder written by save_run?")
    try:
        return RunConfig.from_dict(data)
    except (ValueError, TypeError) as error:
        raise CheckpointError(f"{path}: {error}. It was written by another pyra version or edited by hand; "
                              "fix that entry or train the run again") from None


def load_metrics(run_dir: str | Path) -> dict:
    """Read `metrics.json` of a run."""
    path = Path(run_dir) / METRICS_FILE
    data = _read_json(path, "save the run again with save_run(..., metrics=...)")
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object, found {type(data).__name__}")
    return data


def _read_json(path: Path, hint: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{path}: not found; {hint}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(
            f"{path}: not valid JSON ({error}); the file is damaged: save or train the run again"
        ) from None


def load_run(run_dir: str | Path, *, check_fingerprint: bool = True) -> tuple[nn.Module, RunConfig]:
    """Rebuild a saved model: `build_model(config)` + the adapter, strictly. Returns it in eval mode.

    Args:
        run_dir: a folder written by `save_run`.
        check_fingerprint: refuse a backbone whose weights differ from the one trained on.
    """
    run_dir = Path(run_dir)
    config = load_config(run_dir)
    adapter = _read_adapter(run_dir / ADAPTER_FILE)
    model = build_model(config)
    if check_fingerprint and model.backbone_fingerprint != config.backbone_fingerprint:
        raise CheckpointError(
            f"{run_dir / CONFIG_FILE}: this adapter was trained on a different backbone (fingerprint "
            f"{config.backbone_fingerprint}, this one gives {model.backbone_fingerprint}): use the same "
            f"backbone weights and img_size ({config.backbone!r} at {config.img_size} px), "
            "or pass check_fingerprint=False at your own risk"
        )
    _load_adapter(model, adapter, run_dir / ADAPTER_FILE)
    return model.eval(), config


def _read_adapter(path: Path) -> dict[str, Tensor]:
    """Tensors of a safetensors file; CheckpointError for anything else (pickles included)."""
    if not path.is_file():
        raise CheckpointError(f"{path}: not found; is this a run folder written by save_run?")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as file:
            return {key: file.get_tensor(key) for key in file.keys()}
    except Exception as error:  # any parse failure: not a safetensors file
        raise CheckpointError(f"{path}: not a valid safetensors file ({type(error).__name__}: {error}); "
                              "only adapters written by save_run can be loaded") from None


def _load_adapter(model: nn.Module, adapter: dict[str, Tensor], path: Path) -> None:
    """Strict on the adapter keys: same names, same shapes, finite values."""
    expected = {key: value.shape for key, value in model.state_dict().items() if parameter_kind(key) != "backbone"}
    problems = {
        "missing": sorted(set(expected) - set(adapter)),
        "unexpected": sorted(set(adapter) - set(expected)),
        "wrong shape": [f"{key} {tuple(value.shape)} != {tuple(expected[key])}"
                        for key, value in sorted(adapter.items()) if key in expected and value.shape != expected[key]],
        "non-finite": [key for key, value in sorted(adapter.items())
                       if value.is_floating_point() and not torch.isfinite(value).all()],
    }
    if any(problems.values()):
        found = "; ".join(f"{label} {keys[:4]}{' ...' if len(keys) > 4 else ''}"
                          for label, keys in problems.items() if keys)
        raise CheckpointError(f"{path}: does not fit the model described by {CONFIG_FILE}: {found}; "
                              "the adapter and config.json must come from the same save_run")
    model.load_state_dict(adapter, strict=False)
