"""What a comparison is and what it gives: its settings (`CompareConfig`), its levels, its
progress and its result (`CompareResult`, saved as compare.json and compare.csv). `pyra.run.compare`
runs one.

Every accuracy of ToMe + LoRA and PYRA + LoRA comes from a model trained for that level:
- protocol "elastic" (default): one model per method, trained for the whole range at once
  (`pyra.method.elastic`), evaluated at every level;
- protocol "per-level" (the paper's): one model per method and level, each evaluated at its own
  level (the uncompressed level is the uncompressed LoRA model).
"""
from __future__ import annotations

import csv
import io
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from pyra.files import write_atomic
from pyra.method.elastic import scaled_schedule
from pyra.method.schedule import ScheduleSpec, VitGeometry, flops_ratio, forward_flops, resolve_schedule
from pyra.run.devices import default_device
from pyra.run.recipes import DEFAULT_RECIPE
from pyra.run.train import TrainConfig

COMPARE_JSON, COMPARE_CSV = "compare.json", "compare.csv"  # a comparison's result, in its folder
FEATURES_FILE = "features.npz"  # pre-logits features at the target level, per method, plus "labels"
PAIRS = [("pyra", "tome"), ("pyra", "tome_free"), ("pyra", "uncompressed"), ("tome", "uncompressed")]
PROTOCOLS = ("elastic", "per-level")


def protocol_for(train: TrainConfig) -> str:
    """The protocol a training implies: one elastic model for every level, or one model per level if it is not elastic."""
    return "per-level" if train.elastic == "off" else "elastic"


@dataclass(frozen=True)
class CompareConfig:
    """One comparison: the backbone, the target compression, and how to train and measure."""

    backbone: str = "default"  # "default", "random:NAME", a timm name, or an architecture with weights=
    weights: Optional[str] = None  # local weights file for a timm architecture
    img_size: Optional[int] = None  # None: the backbone's CPU/GPU default
    schedule: ScheduleSpec = "high"  # target compression PYRA and ToMe are trained at
    lora_rank: int = DEFAULT_RECIPE.lora_rank
    lora_dropout: float = DEFAULT_RECIPE.lora_dropout
    drop_path_rate: float = DEFAULT_RECIPE.drop_path_rate
    train: TrainConfig = DEFAULT_RECIPE.train
    seeds: tuple[int, ...] = (0,)
    levels: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)  # fractions of the target schedule
    protocol: str = "elastic"  # "elastic": one model for every level; "per-level": one model per level
    bench_batch: int = 8
    bench_repeats: int = 5
    device: str = field(default_factory=default_device)  # "cuda" when available

    def __post_init__(self) -> None:
        if not self.seeds:
            raise ValueError("give at least one seed")
        if not self.levels or any(not 0.0 <= f <= 1.0 for f in self.levels):
            raise ValueError(f"levels are fractions of the target schedule in [0, 1], got {self.levels}")
        if self.bench_repeats < 1 or self.bench_batch < 1:
            raise ValueError("bench_repeats and bench_batch must be >= 1")
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {', '.join(PROTOCOLS)}, got {self.protocol!r}")
        if self.protocol == "elastic" and self.train.elastic == "off":
            raise ValueError("the elastic protocol needs an elastic mode (uniform or sandwich); "
                             "for one model per level use protocol per-level")

    def training_label(self) -> str:
        """How the compressed models were trained, in words."""
        if self.protocol == "per-level":
            return "one model per compression level"
        return f"one elastic model for every level ({self.train.elastic})"


@dataclass(frozen=True)
class Level:
    """One point of the sweep."""

    index: int
    fraction: float
    schedule: list[int]
    label: str
    flops_ratio: float
    gflops: float


@dataclass(frozen=True)
class CompareProgress:
    stage: str
    fraction: float  # of the whole job, in [0, 1]
    message: str
    step: Optional[int] = None
    total_steps: Optional[int] = None
    eta_s: Optional[float] = None
    loss: Optional[float] = None
    val_accuracy: Optional[float] = None


@dataclass
class CompareResult:
    out_dir: Path
    classes: list[str]
    levels: list[Level]
    rows: list[dict]
    comparisons: dict[int, list[dict]]
    histories: dict[str, list[dict]]
    run_dirs: dict[str, Path]
    status: str = "completed"
    message: str = ""
    reports: dict[str, dict] = field(default_factory=dict)  # method -> classification report at the target
    protocol: str = "elastic"
    training: str = ""  # CompareConfig.training_label()

    def features(self) -> dict[str, np.ndarray]:
        """Validation features at the target level per method (for t-SNE), plus "labels"."""
        with np.load(self.out_dir / FEATURES_FILE, allow_pickle=False) as stored:
            return {key: stored[key] for key in stored.files}

    def rows_at(self, level: int) -> list[dict]:
        return [row for row in self.rows if row["level"] == level]

    @property
    def first_seed(self) -> int:
        """The seed of the first run (the one token maps, reports and speed use)."""
        return int(next(iter(self.run_dirs)).partition("@")[2].partition(":")[0])

    def run_for(self, method: str, level: int, seed: Optional[int] = None) -> Path:
        """The run folder whose model gives `method`'s accuracy at level `level` (first seed by default)."""
        seed = self.first_seed if seed is None else seed
        return self.run_dirs[model_key(method, seed, self.levels[level], self.levels[-1].index, self.protocol)]

    def to_dict(self) -> dict:
        return {
            "classes": self.classes,
            "levels": [asdict(level) for level in self.levels],
            "rows": self.rows,
            "comparisons": {str(k): v for k, v in self.comparisons.items()},
            "histories": self.histories,
            "run_dirs": {k: str(v.relative_to(self.out_dir)) for k, v in self.run_dirs.items()},
            "status": self.status,
            "message": self.message,
            "reports": self.reports,
            "protocol": self.protocol,
            "training": self.training,
        }

    def save(self) -> None:
        """Write compare.json and compare.csv into out_dir (atomically)."""
        write_atomic(self.out_dir / COMPARE_JSON, json.dumps(self.to_dict(), indent=1).encode())
        table = io.StringIO()
        writer = csv.DictWriter(table, fieldnames=list(self.rows[0]) if self.rows else [], lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.rows)
        write_atomic(self.out_dir / COMPARE_CSV, table.getvalue().encode())


def load_compare(out_dir: Path) -> CompareResult:
    """Read a comparison written by `CompareResult.save`."""
    out_dir = Path(out_dir)
    path = out_dir / COMPARE_JSON
    if not path.is_file():
        raise ValueError(f"{path}: no comparison here; run `python -m pyra compare --out {out_dir}` first")
    data = json.loads(path.read_text(encoding="utf-8"))
    return CompareResult(
        out_dir=out_dir,
        classes=data["classes"],
        levels=[Level(**level) for level in data["levels"]],
        rows=data["rows"],
        comparisons={int(k): v for k, v in data["comparisons"].items()},
        histories=data["histories"],
        run_dirs={k: out_dir / v for k, v in data["run_dirs"].items()},
        status=data["status"],
        message=data["message"],
        reports=data.get("reports", {}),
        protocol=data["protocol"],
        training=data["training"],
    )


def sweep_levels(target: list[int], fractions: tuple[float, ...], geo: VitGeometry) -> list[Level]:
    """Levels as fractions of the target schedule, with their FLOPs (PYRA's included)."""
    levels = []
    for index, fraction in enumerate(sorted(set(fractions))):
        schedule = resolve_schedule(scaled_schedule(target, fraction), geo)
        ratio = flops_ratio(schedule, geo, "tome")
        label = "uncompressed" if not any(schedule) else f"{sum(schedule)} tokens merged, {ratio:.2f}x fewer FLOPs"
        gflops = forward_flops(schedule, geo, "pyra" if any(schedule) else "none") / 1e9
        levels.append(Level(index, fraction, schedule, label, ratio, gflops))
    return levels


def model_key(method: str, seed: int, level: Level, target_index: int, protocol: str) -> str:
    """Key (into `CompareResult.run_dirs`) of the model that gives `method`'s row at `level`.

    The uncompressed LoRA model serves the uncompressed row, training-free ToMe, and (per-level
    protocol) the trained methods at a level that merges nothing. An elastic model serves its
    method at every level, the uncompressed one included.
    """
    if method in ("uncompressed", "tome_free"):
        return f"uncompressed@{seed}"
    if protocol == "elastic" or level.index == target_index:
        return f"{method}@{seed}"
    if not any(level.schedule):
        return f"uncompressed@{seed}"
    return f"{method}@{seed}:L{level.index}"
