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
import tempfile
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Optional, get_args

import numpy as np
import timm
import torch
from safetensors import safe_open
from safetensors.torch import save as safetensors_bytes
from torch import Tensor, nn

from pyra.backbone import backbone_fingerprint, create_backbone
from pyra.disk import is_disk_full
from pyra.lora import LoraTarget, add_lora
from pyra.parameters import parameter_kind
from pyra.patch import patch
from pyra.rng import seeded
from pyra.schedule import METHODS
from pyra.train import TrainConfig

__all__ = [
    "CheckpointError", "DiskFullError", "RunConfig", "library_versions", "build_model", "adapter_state", "save_run",
    "write_atomic", "load_config", "load_run", "load_metrics", "CONFIG_FILE", "ADAPTER_FILE", "METRICS_FILE",
]

CONFIG_FILE = "config.json"
ADAPTER_FILE = "adapter.safetensors"
METRICS_FILE = "metrics.json"
RUN_FILES = (ADAPTER_FILE, METRICS_FILE, CONFIG_FILE)  # the order save_run gives them their names
_LORA_TARGETS = get_args(LoraTarget)


class CheckpointError(ValueError):
    """A run folder cannot be read; the message names the file and what to do."""


class DiskFullError(OSError):
    """A file could not be written: the disk is full, or a quota or file size limit was reached.

    The message names the file, its folder and the fix. The files already in the folder are unchanged.
    """

    def __init__(self, path: Path, cause: OSError):
        reason = os.strerror(cause.errno) if cause.errno else str(cause)
        super().__init__(cause.errno, f"not enough disk space to write {path.name} in {path.parent} ({reason}). "
                                      "Free some space on that disk, or write to a folder on another disk, then "
                                      f"try again; the files already in {path.parent.name} are unchanged.")

    def __str__(self) -> str:
        return self.strerror


def library_versions() -> dict[str, str]:
    """Versions of the libraries that shape the numbers of a run."""
    return {"torch": torch.__version__, "timm": timm.__version__, "pyra": _pyra_version()}


def _pyra_version() -> str:
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
    lora_rank: int = 4  # paper: ViT-S 4, ViT-B 8, ViT-L 12
    lora_alpha: Optional[float] = None  # None = lora_rank (scale 1)
    lora_dropout: float = 0.1
    lora_targets: tuple[str, ...] = ("qkv",)
    prop_attn: bool = True  # proportional attention, in training and evaluation
    drop_path_rate: float = 0.1
    train: TrainConfig = field(default_factory=TrainConfig)
    data_source: str = ""  # zip / folder name or "sample:NAME"
    val_fraction: float = 0.25
    split_seed: int = 0  # the train/val split (see pyra.data.load_dataset)
    max_per_class: Optional[int] = None
    seed: int = 0  # data split and model construction (LoRA A, PYRA w_r, random-init backbones)
    versions: dict[str, str] = field(default_factory=library_versions)

    def __post_init__(self) -> None:
        for name in ("classes", "schedule", "lora_targets"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if isinstance(self.train, dict):  # from JSON
            object.__setattr__(self, "train", _from_fields(TrainConfig, self.train, "train"))
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
    adapter = safetensors_bytes(adapter_state(model), metadata={"format": "pt", "pyra": _pyra_version()})
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
            staged[name] = _write_temp(run_dir / name, data)
            temps.append(staged[name])
        if (run_dir / CONFIG_FILE).exists():
            retired = _new_temp(run_dir / CONFIG_FILE)
            temps.append(retired)
            os.replace(run_dir / CONFIG_FILE, retired)
        for name, temp in staged.items():
            os.replace(temp, run_dir / name)
        _fsync_folder(run_dir)
    finally:  # after success only the retired config is left; after a failure, every temp file
        for temp in temps:
            temp.unlink(missing_ok=True)


def _with_fingerprint(model: nn.Module, config: RunConfig) -> RunConfig:
    built = getattr(model, "backbone_fingerprint", "")
    if config.backbone_fingerprint and built and config.backbone_fingerprint != built:
        raise ValueError(f"config.backbone_fingerprint {config.backbone_fingerprint} differs from the model's "
                         f"backbone ({built}); save the config the model was built from")
    if not (config.backbone_fingerprint or built):
        raise ValueError("no backbone fingerprint: build the model with pyra.checkpoint.build_model, or set "
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


def write_atomic(path: Path, data: bytes) -> None:
    """Write to a temp file next to `path`, fsync, then os.replace: readers never see half a file.

    DiskFullError (an OSError) when the disk is full; `path` is then unchanged.
    """
    temp = _write_temp(path, data)
    try:
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    _fsync_folder(path.parent)


def _fsync_folder(folder: Path) -> None:
    """Make the renames in `folder` durable (a no-op where folders cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems cannot sync a folder; the files themselves are synced
    finally:
        os.close(fd)


def _new_temp(path: Path) -> Path:
    """A new, empty temporary file next to `path`, named `.NAME.XXXX.tmp`."""
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    return Path(name)


def _write_temp(path: Path, data: bytes) -> Path:
    """`data` in a new temporary file next to `path`, fsynced; nothing is left behind on failure."""
    temp: Optional[Path] = None
    try:
        temp = _new_temp(path)
        with open(temp, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        return temp
    except BaseException as error:
        if temp is not None:
            temp.unlink(missing_ok=True)
        if is_disk_full(error):
            raise DiskFullError(path, error) from error
        raise


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
