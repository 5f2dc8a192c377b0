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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import plotly.graph_objects as go
from PIL import Image

from pyra.files import size_text
from pyra.report.methods import METHOD_ORDER, method_label
from pyra.report.stats import min_detectable_difference
from pyra.run.checkpoint import ADAPTER_FILE, CONFIG_FILE, METRICS_FILE

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
    "elastic-sandwich-labels": "yes: elastic",
}
PROTOCOL_CHOICES = [("elastic: one model per method for every level", "elastic"),
                    ("per level: one model per method and level (the paper's, slower)", "per-level")]
TABLE_NOTE = ("Latency and throughput: median [25th-75th percentile] over the repeats, measured interleaved "
              "on this machine. FLOPs ratio: uncompressed FLOPs / this model's.")
BATCH1_NOTE = ("One image at a time gains less than a batch: its matrix multiplications are small, and their time "
               "falls more slowly than their FLOPs")
BATCH1_SLOWER_NOTE = ("Here one image at a time is slower merged than uncompressed: its matrix multiplications are "
                      "small, so the merge's own steps cost more than the fewer tokens save")
RUN_FILES = (CONFIG_FILE, ADAPTER_FILE, METRICS_FILE)  # in an exported zip, in this order
TOO_FEW_POINTS = 5.0  # a minimum detectable difference above this many points earns a warning
PREVIEW_SIZE = 96  # pixels: tiny sample images are upscaled for the gallery
THUMBNAIL_SIDE = 256  # pixels: the most a gallery image is (never a full-size copy of an upload)


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


def micro_batch_note(train: Any) -> str:
    """A sentence when a batch trains in smaller passes to fit the memory limit ("" otherwise)."""
    if train.forward_batch == train.batch_size:
        return ""
    return (f" Each batch of {train.batch_size} images trains as passes of {train.forward_batch}, to stay within "
            "the server's training memory limit: the same gradients, more time.")


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


def example_note(speed_measured_here: bool) -> str:
    """What the shipped worked example is, and where its figures come from."""
    speed = ("latency and throughput were measured on this server when you opened this tab"
             if speed_measured_here else "latency and throughput are from the machine that built it until this "
             "server has measured them (it does when you open this tab)")
    return ("**Worked example shipped with the app**: the Quick demo's three models (Fashion-MNIST sample, 100 "
            "training and 300 validation images, default backbone, 2 epochs), trained by "
            "`benchmarks/worked_example.py`. Its accuracies were measured then; " + speed + ". Train your own on "
            "the Train tab (or press Quick demo) to replace it.")


def level_description(level: Any, rows: Sequence[dict], num_levels: int) -> str:
    """Markdown headline for one level: schedule, FLOPs ratio, target and measured speed-up."""
    schedule = " ".join(str(r) for r in level.schedule)
    text = (f"**Level {level.index + 1} of {num_levels}** ({100 * level.fraction:.0f}% of the target schedule): "
            f"{level.label}.  \nTokens merged per layer: `{schedule}`. FLOPs ratio {level.flops_ratio:.2f}x "
            f"(the speed-up FLOPs predict)")
    by_method = {row["method"]: row for row in rows}
    base, pyra = by_method.get("uncompressed"), by_method.get("pyra")
    if base and pyra and base.get("throughput") and pyra.get("throughput"):
        throughput_gain = pyra["throughput"] / base["throughput"]
        text += f"; measured PYRA throughput speed-up {throughput_gain:.2f}x"
        if base.get("latency_ms") and pyra.get("latency_ms"):
            latency_gain = base["latency_ms"] / pyra["latency_ms"]
            text += f", batch-1 latency speed-up {latency_gain:.2f}x"
            if any(level.schedule) and round(latency_gain, 2) < round(throughput_gain, 2):
                text += ".  \n" + (BATCH1_SLOWER_NOTE if round(latency_gain, 2) < 1 else BATCH1_NOTE)
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
    config = json.loads((run_dir / CONFIG_FILE).read_text())
    if config.get("backbone_weights"):
        config["backbone_weights"] = Path(config["backbone_weights"]).name
    zip_path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(zip_path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name in RUN_FILES:
            if name == CONFIG_FILE:
                archive.writestr(name, json.dumps(config, indent=2) + "\n")
            else:
                archive.write(run_dir / name, arcname=name)
    return zip_path


def level_choices(levels: Sequence[Any]) -> list[tuple[str, int]]:
    """Dropdown (label, index) pairs for a comparison's levels, e.g. ("Level 3 of 3: 63 tokens merged, ...", 2)."""
    return [(f"Level {level.index + 1} of {len(levels)}: {level.label}", level.index) for level in levels]


def onnx_summary(info: Any) -> str:
    """What an ONNX export wrote, in one paragraph (`info`: pyra.run.onnx_export.ExportInfo)."""
    merges = info.method != "none" and any(info.schedule)
    merging = (f"{'PYRA' if info.method == 'pyra' else 'ToMe'} merging {sum(info.schedule)} tokens over the "
               "layers" if merges else "no merging")
    return (f"**{size_text(info.bytes)}**, {info.img_size} px, batch {info.batch}, {merging}, "
            f"{len(info.classes)} classes. {info.check.describe()}"
            + (f"\n\n**Speed on this server.** {info.speed.describe()}" if info.speed is not None else ""))


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
from pyra.run.cpu_layout import column_major_linears
from pyra.data.datasets import make_transform
from pyra.data.images import to_rgb

IMAGE = "photo.jpg"  # any image to classify

zipfile.ZipFile("{zip_name}").extractall("{folder}")
model, config = load_run("{folder}")  # backbone + LoRA + merging, adapter loaded, eval mode
pyra.merge_lora(model)                 # fold LoRA into the weights: no extra cost at inference
column_major_linears(model)            # the same weights, laid out for faster CPU inference of one image
print(config.classes, config.method, list(config.schedule))  # tokens merged per layer

transform = make_transform(data_config(model), config.img_size)
with torch.inference_mode():
    logits = model(transform(to_rgb(Image.open(IMAGE)))[None])
print(config.classes[int(logits.argmax())])
# pyra.set_schedule(model, [r // 2 for r in config.schedule]) merges less: slower, often more accurate
# (an elastic run, config.train.elastic != "off", was trained for every such level up to its schedule)
'''
