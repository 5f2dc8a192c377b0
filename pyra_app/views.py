"""Pure functions that turn engine objects into what the UI shows (text, tables, settings).

No Gradio and no tensor code here: everything takes plain engine results (or duck-typed
look-alikes) and returns strings, rows, PIL images, plotly figures or engine config objects,
so it is unit-tested without a server.
"""
from __future__ import annotations

import json
import math
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Optional

import plotly.graph_objects as go
from PIL import Image

from pyra.method.schedule import parse_schedule
from pyra.report.methods import METHOD_ORDER, method_label
from pyra.report.stats import min_detectable_difference
from pyra.run.comparison import PROTOCOLS, CompareConfig
from pyra.run.recipes import DEFAULT_RECIPE
from pyra.run.train import MAX_SEED
from pyra_app.budget import Budget

COMPARE_HEADERS = [
    "Method", "Accuracy [95% CI]", "Trained for this level", "Latency ms, batch 1", "Throughput img/s",
    "GFLOPs / image", "FLOPs ratio", "Threads",
]
TRAINING_TEXT = {  # compare row "training" -> the table's "Trained for this level" cell
    "uncompressed": "yes",
    "training-free": "no: training-free",
    "per-level": "yes: its own model",
    "elastic-uniform": "yes: elastic",
    "elastic-sandwich": "yes: elastic",
}
PROTOCOL_CHOICES = [("elastic: one model per method for every level", "elastic"),
                    ("per level: one model per method and level (the paper's, slower)", "per-level")]
TABLE_NOTE = ("Latency and throughput: median [25th-75th percentile] over the repeats, measured interleaved "
              "on this machine. FLOPs ratio: uncompressed FLOPs / this model's.")
RUN_FILES = ("config.json", "adapter.safetensors", "metrics.json")
TOO_FEW_POINTS = 5.0  # a minimum detectable difference above this many points earns a warning
PREVIEW_SIZE = 96  # pixels: tiny sample images are upscaled for the gallery
THUMBNAIL_SIDE = 256  # pixels: the most a gallery image is (never a full-size copy of an upload)
PICKED_IMAGE_SIDE = 512  # pixels: a validation image picked for token maps (the model sees at most 448)


# ---------------------------------------------------------------- data tab

@dataclass(frozen=True)
class DataPreview:
    summary: str  # Markdown
    gallery: list[tuple[Image.Image, str]]  # (image, caption), a few per class
    counts: list[list[Any]]  # class, train, val
    skipped: list[list[str]]  # file, reason
    warnings: str  # Markdown, "" when there are none


def data_preview(split: Any, per_class: int = 4) -> DataPreview:
    """What the Data tab shows about a loaded `pyra.data.datasets.DatasetSplit`."""
    counts = [[name, n_train, n_val] for name, (n_train, n_val) in split.class_counts().items()]
    total_train, total_val = len(split.train), len(split.val)
    summary = (
        f"**{split.source}**: {len(split.classes)} classes, {total_train + total_val} images "
        f"({total_train} train / {total_val} validation)."
    )
    if split.skipped:
        summary += f" {len(split.skipped)} files skipped (listed below with the reason)."
    warnings = "\n".join(f"- {text}" for text in split.warnings)
    return DataPreview(
        summary=summary,
        gallery=preview_images(split.train + split.val, split.classes, per_class),
        counts=counts,
        skipped=[[item.path, item.reason] for item in split.skipped],
        warnings=f"**Warnings**\n\n{warnings}" if warnings else "",
    )


def preview_images(records: Sequence[Any], classes: Sequence[str], per_class: int) -> list[tuple[Image.Image, str]]:
    """Thumbnails of the first `per_class` images of every class, captioned with the class name."""
    chosen: dict[int, list[Any]] = {label: [] for label in range(len(classes))}
    for record in records:
        if len(chosen[record.label]) < per_class:
            chosen[record.label].append(record)
    return [(display_image(record.thumbnail(THUMBNAIL_SIDE)), classes[label])
            for label, items in chosen.items() for record in items]


def display_image(image: Image.Image, size: int = PREVIEW_SIZE) -> Image.Image:
    """Upscale tiny images (28x28 samples) with sharp pixels so the gallery shows them clearly."""
    if max(image.size) >= size:
        return image
    scale = max(1, size // max(image.size))
    return image.resize((image.width * scale, image.height * scale), Image.NEAREST)


def sample_choices(samples: Iterable[Any]) -> list[tuple[str, str]]:
    """Dropdown (label, value) pairs for `pyra.data.samples.list_samples()`."""
    return [(f"{s.name}: {s.description} ({s.num_images} images)", s.name) for s in samples]


# ---------------------------------------------------------------- train tab

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
    protocol: str = "elastic"  # see pyra.run.compare: "elastic" or "per-level"


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


def train_settings(backbone: Any, weights: Any, img_size: Any, lora_rank: Any, epochs: Any,
                   batch_size: Any, lr: Any, pyra_lr: Any, schedule: Any, seeds: Any, num_levels: Any,
                   bench_repeats: Any, protocol: Any = "elastic", budget: Budget = Budget()) -> TrainSettings:
    """Validate the raw control values against the field ranges and `budget`; ValueError names the control
    and the fix."""
    size = None if img_size in (None, "", 0, 0.0) else _positive_int(
        img_size, "image size", low=8, high=budget.max_img_size, fix=" px (raise PYRA_MAX_IMG_SIZE to allow more)")
    if weights is not None and not isinstance(weights, str):
        raise ValueError(f"weights file: expected an uploaded file, got {_shown(weights)}")
    return TrainSettings(
        backbone=_text(backbone, "backbone", "default"),
        weights=weights or None,
        img_size=size,
        lora_rank=_positive_int(lora_rank, "LoRA rank", high=MAX_LORA_RANK),
        epochs=_positive_int(epochs, "epochs", high=MAX_EPOCHS),
        batch_size=_positive_int(batch_size, "batch size", high=budget.max_batch,
                                 fix=" (raise PYRA_MAX_BATCH to allow more)"),
        lr=_positive_float(lr, "learning rate"),
        pyra_lr=_positive_float(pyra_lr, "PYRA learning rate"),
        schedule=_text(schedule, "target compression", "high"),
        seeds=parse_seeds(_text(seeds, "seeds", "0", limit=MAX_SEEDS_TEXT)),
        num_levels=_positive_int(num_levels, "compression levels", low=2, high=MAX_LEVELS),
        bench_repeats=_positive_int(bench_repeats, "speed measurement repeats", high=MAX_BENCH_REPEATS),
        protocol=_protocol(protocol),
    )


def _protocol(value: Any) -> str:
    if not isinstance(value, str) or value not in PROTOCOLS:
        raise ValueError(f"training protocol: choose one of {', '.join(PROTOCOLS)}, got {value!r}")
    return str(value)


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
                      pyra_lr=settings.pyra_lr),
        seeds=settings.seeds,
        levels=levels,
        protocol=settings.protocol,
        bench_repeats=settings.bench_repeats,
    )


def loss_figure(losses: Sequence[dict]) -> Any:
    """Live training loss: one line per run, from {"step", "loss", "run"} items (runs in order of appearance)."""
    figure = go.Figure()
    for run in dict.fromkeys(item["run"] for item in losses):
        points = [item for item in losses if item["run"] == run]
        figure.add_trace(go.Scatter(x=[p["step"] for p in points], y=[p["loss"] for p in points], mode="lines",
                                    name=run))
    figure.update_layout(title="Training loss per run", xaxis_title="step", yaxis_title="loss", height=340,
                         margin=dict(l=50, r=20, t=50, b=40), legend=dict(orientation="h", y=-0.25),
                         uirevision="losses")  # keep the user's zoom while the chart updates
    return figure


def format_duration(seconds: Optional[float]) -> str:
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return "?"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def progress_status(progress: Any, elapsed_s: float) -> str:
    """One Markdown status line for a `pyra.run.comparison.CompareProgress`."""
    parts = [f"**{progress.stage}** ({100 * progress.fraction:.0f}%)"]
    if progress.step is not None and progress.total_steps:
        parts.append(f"step {progress.step}/{progress.total_steps}")
    elif progress.message:
        parts.append(progress.message)
    if progress.loss is not None and math.isfinite(progress.loss):
        parts.append(f"loss {progress.loss:.3f}")
    if progress.val_accuracy is not None:
        parts.append(f"val accuracy {100 * progress.val_accuracy:.1f}%")
    if progress.eta_s is not None:
        parts.append(f"this run: {format_duration(progress.eta_s)} left")
    if 0.02 < progress.fraction < 1.0:
        parts.append(f"whole job: ~{format_duration(elapsed_s * (1 - progress.fraction) / progress.fraction)} left")
    parts.append(f"elapsed {format_duration(elapsed_s)}")
    return " · ".join(parts)


def result_status(result: Any, elapsed_s: float) -> str:
    """Final status line of a comparison."""
    if result.status == "completed":
        return (f"**Done** in {format_duration(elapsed_s)}: {len(result.levels)} compression levels measured. "
                "Open the **Compare** tab.")
    if result.status == "cancelled":
        return f"**Stopped** after {format_duration(elapsed_s)}. {result.message}".strip()
    return f"**Training {result.status}**: {result.message}".strip()


# ---------------------------------------------------------------- compare tab

def _percent(value: Optional[float]) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{100 * value:.1f}%"


def _number(value: Optional[float], digits: int = 1) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def _spread(median: Optional[float], low: Optional[float], high: Optional[float], digits: int = 1) -> str:
    if median is None:
        return "n/a"
    if low is None or high is None:
        return _number(median, digits)
    return f"{_number(median, digits)} [{_number(low, digits)}-{_number(high, digits)}]"


def ordered_rows(rows: Iterable[dict]) -> list[dict]:
    """Rows in the table's method order (unknown methods last, in their given order)."""
    rank = {name: index for index, name in enumerate(METHOD_ORDER)}
    return sorted(rows, key=lambda row: rank.get(row["method"], len(rank)))


def compare_table(rows: Iterable[dict]) -> list[list[str]]:
    """Rows of one compression level -> the Compare table (see COMPARE_HEADERS)."""
    table = []
    for row in ordered_rows(rows):
        accuracy = _percent(row.get("accuracy"))
        if row.get("accuracy_low") is not None and row.get("accuracy_high") is not None:
            accuracy += f" [{_percent(row['accuracy_low'])}-{_percent(row['accuracy_high'])}]"
        gflops = row.get("gflops")
        table.append([
            row.get("method_label") or method_label(row["method"]),
            accuracy,
            TRAINING_TEXT.get(row.get("training", ""), "?"),
            _spread(row.get("latency_ms"), row.get("latency_p25"), row.get("latency_p75"), 1),
            _spread(row.get("throughput"), row.get("throughput_p25"), row.get("throughput_p75"), 1),
            _number(gflops, 3) if gflops is not None else "full",
            f"{row['flops_ratio']:.2f}x" if row.get("flops_ratio") else "1.00x",
            str(row.get("threads", "")),
        ])
    return table


def training_note(protocol: str, training: str) -> str:
    """What every slider position means, for the comparison's protocol."""
    if protocol == "per-level":
        how = ("ToMe + LoRA and PYRA + LoRA were trained once per level (the paper's protocol), so each "
               "accuracy comes from the model trained for that level.")
    else:
        how = (f"ToMe + LoRA and PYRA + LoRA were each trained as {training or 'one elastic model'}: every optimiser "
               "step merged at a level between uncompressed and the target, so the same model is trained for every "
               "slider position.")
    return how + " Training-free ToMe is the uncompressed LoRA model with merging switched on afterwards."


def level_description(level: Any, rows: Sequence[dict], num_levels: int) -> str:
    """Markdown headline for one level: schedule, FLOPs ratio, target and measured speed-up."""
    schedule = " ".join(str(r) for r in level.schedule)
    text = (f"**Level {level.index + 1} of {num_levels}** ({100 * level.fraction:.0f}% of the target schedule): "
            f"{level.label}.  \nTokens merged per layer: `{schedule}`. FLOPs ratio {level.flops_ratio:.2f}x "
            f"(the speed-up FLOPs predict)")
    by_method = {row["method"]: row for row in rows}
    base, pyra = by_method.get("uncompressed"), by_method.get("pyra")
    if base and pyra and base.get("throughput") and pyra.get("throughput"):
        text += f"; measured PYRA throughput speed-up {pyra['throughput'] / base['throughput']:.2f}x"
    return text + "."


def verdict_markdown(comparisons: Sequence[dict]) -> str:
    """The paired-difference sentences of one level as a Markdown list."""
    if not comparisons:
        return "_No paired comparisons at this level._"
    lines = []
    for entry in comparisons:
        sentence = entry.get("sentence") or f"{entry.get('name_a')} vs {entry.get('name_b')}: {entry.get('verdict')}"
        seeds = entry.get("seeds")
        if seeds and seeds.get("low") is not None:
            sentence += (f" Over {seeds['n']} seeds the mean difference is {100 * seeds['mean']:+.1f} points "
                         f"(95% interval {100 * seeds['low']:+.1f} to {100 * seeds['high']:+.1f}).")
        lines.append(f"- {sentence}")
    return "\n".join(lines)


def sample_size_hint(rows: Sequence[dict]) -> str:
    """How many validation images the numbers rest on, and what difference they can resolve."""
    rows = [row for row in rows if row.get("n_val")]
    if not rows:
        return ""
    n = int(rows[0]["n_val"])
    accuracy = sum(row["accuracy"] for row in rows) / len(rows)
    points = 100 * min_detectable_difference(n, min(1.0, max(0.0, accuracy)))
    text = (f"Accuracies are measured on **{n} validation images**: differences smaller than about "
            f"**{points:.0f} points** cannot be told apart from chance at this size.")
    if points > TOO_FEW_POINTS:
        text = "⚠️ " + text + " Add images (or seeds) for a firmer comparison."
    return text


def chart_rows(rows: Iterable[dict]) -> list[dict]:
    """Rows for the accuracy-vs-throughput chart, in method order; each keeps its method key, which
    gives its label and its colour."""
    return ordered_rows(rows)


def highlight_point(rows: Sequence[dict]) -> Optional[dict]:
    """The chart point to emphasise at one level (in `chart_rows` form): PYRA's, else the first row's."""
    chosen = next((row for row in rows if row["method"] == "pyra"), rows[0] if rows else None)
    if chosen is None:
        return None
    return {"method": chosen["method"], "schedule_label": chosen["schedule_label"]}


# ---------------------------------------------------------------- runs, insights, export

def run_choices(run_dirs: dict[str, Path]) -> list[tuple[str, str]]:
    """Dropdown (label, key) pairs for the result's runs, e.g. ("PYRA + LoRA, seed 0", "pyra@0");
    a per-level run "pyra@0:L2" reads "PYRA + LoRA, seed 0, level 3"."""
    choices = []
    for key in run_dirs:
        method, _, rest = key.partition("@")
        seed, _, level = rest.partition(":L")
        label = method_label(method)
        label = f"{label}, seed {seed}" if seed else label
        choices.append((f"{label}, level {int(level) + 1}" if level else label, key))
    return choices


def export_run_zip(run_dir: Path, zip_path: Path) -> Path:
    """Zip a run's config.json + adapter.safetensors + metrics.json (flat) into `zip_path`.

    An uploaded weights file is named in the exported config.json by its file name only (put it
    next to the config): its path on the server is the server's business.
    """
    run_dir = Path(run_dir)
    missing = [name for name in RUN_FILES if not (run_dir / name).is_file()]
    if missing:
        raise ValueError(f"{run_dir.name}: the run is incomplete (missing {', '.join(missing)}); train it again")
    config = json.loads((run_dir / "config.json").read_text())
    if config.get("backbone_weights"):
        config["backbone_weights"] = Path(config["backbone_weights"]).name
    zip_path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(zip_path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name in RUN_FILES:
            if name == "config.json":
                archive.writestr(name, json.dumps(config, indent=2) + "\n")
            else:
                archive.write(run_dir / name, arcname=name)
    return zip_path


def python_snippet(run_key: str, zip_name: str) -> str:
    """How to use an exported run from Python with the pyra API (runs as-is next to the zip)."""
    folder = run_key.replace("@", "_seed").replace(":", "_")
    return f'''# In the PYRA Studio repository (pip install -r requirements.txt):
import zipfile

import torch
from PIL import Image

import pyra
from pyra.backbones.factory import data_config
from pyra.run.checkpoint import load_run
from pyra.data.datasets import make_transform
from pyra.data.images import to_rgb

IMAGE = "photo.jpg"  # any image to classify

zipfile.ZipFile("{zip_name}").extractall("{folder}")
model, config = load_run("{folder}")  # backbone + LoRA + merging, adapter loaded, eval mode
pyra.merge_lora(model)                 # fold LoRA into the weights: no extra cost at inference
print(config.classes, config.method, list(config.schedule))  # tokens merged per layer

transform = make_transform(data_config(model), config.img_size)
with torch.inference_mode():
    logits = model(transform(to_rgb(Image.open(IMAGE)))[None])
print(config.classes[int(logits.argmax())])
# pyra.set_schedule(model, [r // 2 for r in config.schedule]) merges less: slower, often more accurate
# (an elastic run, config.train.elastic != "off", was trained for every such level up to its schedule)
'''
