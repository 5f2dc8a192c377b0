"""Event handlers: translate Gradio values into `pyra` calls and engine results into UI values.

Every handler takes the session `Session` (from ``gr.State``) first and returns it when it
changes it. Engine errors are `ValueError`s with a message written for users
(DataError, CheckpointError, BackboneError, ...), or a full disk (`pyra.files.is_disk_full`): they
reach the browser as `gr.Error` pop-ups or status lines, never as tracebacks. Nothing here
touches tensors.
"""
from __future__ import annotations

import functools
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Optional

import gradio as gr
import pandas as pd
from PIL import Image

from pyra.data.datasets import load_dataset
from pyra.data.images import read_image
from pyra.data.limits import Limits
from pyra.data.samples import example_photos
from pyra.files import DiskFullError, is_disk_full, size_text
from pyra.report.methods import METHOD_ORDER, method_label
from pyra.report.plots import (
    accuracy_vs_throughput,
    confusion_matrix_figure,
    per_class_accuracy_figure,
    training_curves,
    tsne_figure,
)
from pyra.report.traces import inspect_layer, token_maps
from pyra.run.compare import run_compare
from pyra.run.plan import plan_compare
from pyra_app import views
from pyra_app.budget import Budget, folder_bytes
from pyra_app.messages import public_text
from pyra_app.session import Session, end_session_by_hash, open_session, sweep_now_and_then, touch, work_root
from pyra_app.uploads import discard_upload, upload_name

log = logging.getLogger("pyra_app")

UPDATE_EVERY_S = 0.5  # the training generator yields the status line at most this often
CHART_EVERY_S = 2.0  # ... and the loss chart at most this often
JOB_CHECK_EVERY_S = 5.0  # a running job's disk use is measured (and its session touched) at most this often
INPUT_IMAGE_SIDE = 1024  # px: an image sent to token maps / inspect is shrunk to this before use

# The quick demo: the built-in Fashion-MNIST sample (10 train + 30 validation images per class), the shipped
# DINOv2 ViT-S/14 at its CPU default of 112 px, the default recipe (head start, elastic sandwich training)
# for QUICK_DEMO_TRAIN.epochs epochs, three levels. Its time on 2 CPU cores is in docs/RESULTS.md. Its 14
# optimiser steps want a lower learning rate than the recipe's (chosen on other splits of the same data by
# benchmarks/quick_demo_recipe.py).
QUICK_DEMO_DATA = {"sample": "fashion", "max_per_class": 40, "val_fraction": 0.75}
QUICK_DEMO_TRAIN = views.TrainSettings(epochs=2, lr=1e-3, num_levels=3, bench_repeats=3)


class UserError(Exception):
    """Raised inside handlers for input problems found by the UI itself."""


def friendly_errors(handler: Callable) -> Callable:
    """Turn engine ValueErrors into gr.Error pop-ups; log anything unexpected, show one line."""

    @functools.wraps(handler)
    def wrapper(*args, **kwargs):
        try:
            return handler(*args, **kwargs)
        except gr.Error:
            raise
        except (ValueError, UserError) as error:
            raise gr.Error(public_text(str(error)), print_exception=False) from None
        except Exception as error:  # a bug or an environment problem: keep the traceback in the log
            if is_disk_full(error):
                raise gr.Error(disk_full_message(error), print_exception=False) from None
            log.exception("handler %s failed", handler.__name__)
            raise gr.Error(unexpected_message(error), print_exception=False) from None

    return wrapper


def unexpected_message(error: BaseException) -> str:
    return public_text(f"Unexpected error ({type(error).__name__}): {error}. Details are in the server log.")


def session_for(session: Optional[Session], request: Optional[gr.Request]) -> Session:
    """The caller's session, with its work directory created on first use; idle sessions are swept."""
    sweep_now_and_then(Budget.from_env().idle_seconds)
    session = open_session(session, getattr(request, "session_hash", None))
    touch(session)
    return session


def end_of_session(request: gr.Request) -> None:
    """Unload: the browser tab closed; remove the session's directory (a running job then stops)."""
    end_session_by_hash(getattr(request, "session_hash", None))


def _require_result(session: Optional[Session]) -> Any:
    if session is None or session.result is None or not session.result.levels:
        raise UserError("No comparison yet: train one on the Train tab (or press Quick demo) first.")
    return session.result


def _level_index(result: Any, level: Any) -> int:
    """A slider value as a valid level index of `result`."""
    return views.slider_index(level or 0, 0, len(result.levels) - 1, "compression level")


def _require_idle(session: Session) -> None:
    if session.busy:
        raise UserError("A comparison is running in this session: wait for it or press Stop first.")


def _require_data(session: Optional[Session]) -> Any:
    if session is None or session.data is None:
        raise UserError("No dataset yet: load a sample or upload a zip on the Data tab first.")
    return session.data


# ---------------------------------------------------------------- data tab

def _data_outputs(session: Session) -> tuple:
    preview = views.data_preview(session.data)
    counts = pd.DataFrame(preview.counts, columns=["class", "train images", "validation images"])
    skipped = pd.DataFrame(preview.skipped, columns=["file", "reason"])
    return (session, preview.summary, preview.gallery, counts, skipped, preview.warnings,
            *validation_image_updates(session))


def validation_image_updates(session: Session, pickers: int = 2) -> tuple:
    """New choices for the validation-image dropdowns of the Token maps and Inside-a-layer tabs."""
    data = session.data
    choices = [] if data is None else [(f"{r.name} ({data.classes[r.label]})", i) for i, r in enumerate(data.val)]
    return tuple(gr.Dropdown(choices=choices, value=None) for _ in range(pickers))


def _load(session: Optional[Session], source: str | Path, max_per_class: Any, val_fraction: Any,
          request: Optional[gr.Request]) -> tuple:
    session = session_for(session, request)
    _require_idle(session)
    cap, fraction = views.data_settings(max_per_class, val_fraction)
    session.data = None  # the old dataset's files go now; a refused upload leaves no dataset behind
    folder = session.data_dir()
    budget = Budget.from_env()
    budget.check_disk(session.workdir, work_root())
    session.data = load_dataset(source, folder, val_fraction=fraction, max_per_class=cap,
                                budget=budget.write_budget(session.workdir, work_root()))
    return _data_outputs(session)


@friendly_errors
def load_sample(session: Optional[Session], sample: str, max_per_class: Any, val_fraction: float,
                request: gr.Request) -> tuple:
    """Load a built-in sample ("sample:NAME") into the session."""
    if not sample or not isinstance(sample, str):
        raise UserError("Choose a sample first.")
    return _load(session, f"sample:{sample}", max_per_class, val_fraction, request)


@friendly_errors
def load_zip(session: Optional[Session], zip_path: Optional[str], max_per_class: Any, val_fraction: float,
             request: gr.Request) -> tuple:
    """Load an uploaded zip (one folder of images per class) into the session."""
    if not zip_path or not isinstance(zip_path, str):
        raise UserError("Upload a .zip file with one folder of images per class.")
    try:
        return _load(session, Path(zip_path), max_per_class, val_fraction, request)
    finally:  # extracted or refused: the upload itself is not needed any more
        discard_upload(zip_path)


# ---------------------------------------------------------------- train tab

def _run_compare_in_thread(session: Session, config: Any, out_dir: Path, events: queue.Queue,
                           budget: Budget) -> threading.Thread:
    """Start `pyra.run.compare.run_compare` in a worker thread; progress and the outcome go to `events`.

    The job stops (as if Stop were pressed) when the session ends, when it has run for
    `budget.job_seconds`, or when the session's files outgrow its disk budget; `events` then
    gets ("limit", message) first.
    """
    data, cancel = session.data, session.cancel
    deadline = time.monotonic() + budget.job_seconds
    checked = [0.0]

    def stop_for(message: str) -> None:
        if not cancel.is_set():
            events.put(("limit", message))
        cancel.set()

    def on_progress(progress: Any) -> None:
        now = time.monotonic()
        if not session.alive:  # the session ended (tab closed, directory removed): stop the job
            cancel.set()
        elif now > deadline:
            stop_for(f"the job reached its time limit of {budget.job_seconds / 60:g} min, so training stopped "
                     "(shared server: use fewer epochs, seeds or images, or raise PYRA_JOB_MINUTES)")
        elif now - checked[0] > JOB_CHECK_EVERY_S:
            checked[0] = now
            touch(session)
            used = folder_bytes(session.workdir)
            if used > budget.session_disk_bytes:
                stop_for(f"this session's files reached {size_text(used)}, more than its disk budget of "
                         f"{size_text(budget.session_disk_bytes)}, so training stopped "
                         "(or raise PYRA_SESSION_DISK_MB)")
        events.put(("progress", progress))

    def work() -> None:
        try:
            events.put(("result", run_compare(data, config, out_dir, on_progress=on_progress, cancel=cancel)))
        except Exception as error:  # handed to the generator, which shows it
            events.put(("error", error))

    thread = threading.Thread(target=work, name=f"compare-{out_dir.name}", daemon=True)
    thread.start()
    return thread


def train(session: Optional[Session], backbone: str, weights: Optional[str], img_size: Any, lora_rank: Any,
          epochs: Any, batch_size: Any, lr: Any, pyra_lr: Any, schedule: str, seeds: str, num_levels: Any,
          bench_repeats: Any, protocol: Any, request: gr.Request) -> Iterator[tuple]:
    """Train uncompressed / ToMe / PYRA and sweep the levels; yields (session, status, loss chart).

    The job runs in a worker thread; this generator relays its progress. Stop sets the
    session's cancel event, which the engine checks every step.
    """
    session = session_for(session, request)
    budget = Budget.from_env()
    try:
        _require_idle(session)
        data = _require_data(session)
        settings = views.train_settings(backbone, weights, img_size, lora_rank, epochs, batch_size, lr,
                                        pyra_lr, schedule, seeds, num_levels, bench_repeats, protocol, budget)
        if settings.weights:
            budget.check_weights(Path(settings.weights))
        config = views.compare_config(settings)
        budget.check_plan(plan_compare(data, config))
        budget.check_disk(session.workdir, work_root())
    except (ValueError, UserError) as error:
        raise gr.Error(public_text(str(error)), print_exception=False) from None
    except Exception as error:  # a bug or a broken install: keep the traceback in the log
        log.exception("could not prepare the comparison")
        raise gr.Error(unexpected_message(error), print_exception=False) from None

    session.cancel.clear()
    events: queue.Queue = queue.Queue()
    out_dir = session.new_run_dir()
    start = time.monotonic()
    losses: list[dict] = []
    status = "**Starting**: building the models..."
    yield session, status, None
    thread = session.job = _run_compare_in_thread(session, config, out_dir, events, budget)
    outcome: Optional[tuple[str, Any]] = None
    limit: Optional[str] = None  # why the job was stopped by a limit
    last_yield = last_chart = 0.0
    charted = 0  # loss points already drawn
    try:
        while outcome is None:
            try:
                kind, payload = events.get(timeout=UPDATE_EVERY_S)
            except queue.Empty:
                kind, payload = "tick", None
            if kind == "progress":
                status = views.progress_status(payload, time.monotonic() - start)
                if payload.loss is not None and payload.step is not None and payload.stage.startswith("train"):
                    losses.append({"step": payload.step, "loss": payload.loss, "run": payload.stage})
            elif kind == "limit":
                limit = payload
            elif kind in ("result", "error"):
                outcome = (kind, payload)
                break
            now = time.monotonic()
            if now - last_yield >= UPDATE_EVERY_S:
                chart = gr.skip()
                if len(losses) > charted and now - last_chart >= CHART_EVERY_S:
                    chart, charted, last_chart = views.loss_figure(losses), len(losses), now
                last_yield = now
                yield session, status, chart
    finally:  # the generator is closed early (client gone, server stopping): stop the worker too
        if outcome is None:
            session.cancel.set()
    thread.join(timeout=5)
    chart = views.loss_figure(losses) if losses else None
    kind, payload = outcome
    if kind == "error":  # show it in the status line and as a pop-up
        message = _failure_message(payload)
        yield session, f"**Training failed**: {message}", chart
        raise gr.Error(message, print_exception=False)
    if payload.status == "completed":
        session.result = payload
    elif payload.status != "cancelled":
        gr.Warning(public_text(f"Training {payload.status}: {payload.message}"))
    status = views.result_status(payload, time.monotonic() - start)
    yield session, f"**Stopped**: {limit}." if limit else status, chart


def disk_full_message(error: OSError) -> str:
    """What a full disk means here (the file, when the engine names it), without the server's paths."""
    what = str(error) if isinstance(error, DiskFullError) else f"not enough disk space ({error.strerror})."
    return public_text(f"{what} The server's disk for session files is full: try again later "
                       "(whoever runs the app can set PYRA_WORK_ROOT to a larger disk).")


def _failure_message(error: Exception) -> str:
    if isinstance(error, ValueError):  # the engine's input errors are written for users
        return public_text(str(error))
    if is_disk_full(error):
        return disk_full_message(error)
    log.error("comparison failed", exc_info=error)
    return public_text(f"unexpected {type(error).__name__}: {error}. Details are in the server log.")


@friendly_errors
def stop(session: Optional[Session]) -> str:
    """Ask the running job to stop after its current step."""
    if session is None or not session.busy:
        return "Nothing is running."
    session.cancel.set()
    return "**Stopping** after the current step..."


@friendly_errors
def quick_demo_settings(session: Optional[Session], request: gr.Request) -> tuple:
    """Load the quick demo's data and fill the Train controls with its settings."""
    session = session_for(session, request)
    data = load_sample(session, QUICK_DEMO_DATA["sample"], QUICK_DEMO_DATA["max_per_class"],
                       QUICK_DEMO_DATA["val_fraction"], request)
    s = QUICK_DEMO_TRAIN
    controls = (QUICK_DEMO_DATA["sample"], QUICK_DEMO_DATA["max_per_class"], s.backbone, None, s.img_size or 0,
                s.lora_rank, s.epochs, s.batch_size, s.lr, s.pyra_lr, s.schedule, ", ".join(map(str, s.seeds)),
                s.num_levels, s.bench_repeats, s.protocol)
    return (*data, *controls)


def buttons_busy() -> tuple:
    return gr.Button(interactive=False), gr.Button(interactive=False), gr.Button(interactive=True)


def buttons_idle() -> tuple:
    return gr.Button(interactive=True), gr.Button(interactive=True), gr.Button(interactive=False)


# ---------------------------------------------------------------- compare tab

def _slider_update(result: Any) -> gr.Slider:
    last = len(result.levels) - 1
    return gr.Slider(minimum=0, maximum=max(last, 1), value=last, step=1, interactive=last > 0,
                     label=f"Compression level (0 = uncompressed, {last} = the trained target)")


@friendly_errors
def select_level(session: Optional[Session], level: Any) -> tuple:
    """Everything the Compare tab shows at one level, from the cached result (no recomputation)."""
    result = _require_result(session)
    index = _level_index(result, level)
    rows = result.rows_at(index)
    table = pd.DataFrame(views.compare_table(rows), columns=views.COMPARE_HEADERS)
    chart = accuracy_vs_throughput(views.chart_rows(result.rows), highlight=views.highlight_point(rows))
    description = (views.level_description(result.levels[index], rows, len(result.levels)) + "\n\n"
                   + views.training_note(result.protocol, result.training))
    return (description, table,
            views.verdict_markdown(result.comparisons.get(index, [])), views.sample_size_hint(rows), chart)


RESULT_OUTPUTS = 17  # components show_results updates (see pyra_app.ui)


@friendly_errors
def show_results(session: Optional[Session]) -> tuple:
    """After training: refresh the Compare, Token maps, Inside-a-layer, Insights and Export tabs.

    Without a finished comparison (the job was stopped before its first result) nothing changes.
    """
    if session is None or session.result is None or not session.result.levels:
        return tuple(gr.skip() for _ in range(RESULT_OUTPUTS))
    result = session.result
    level_views = select_level(session, len(result.levels) - 1)
    runs = views.run_choices(result.run_dirs)
    depth = len(result.levels[-1].schedule)
    layer = gr.Slider(minimum=1, maximum=depth, value=1, step=1, interactive=True, label=f"Layer (1-{depth})")
    keys = [key for _, key in runs]
    first_run = next((key for key in keys if key.startswith("pyra@")), keys[0] if keys else None)
    return (
        _slider_update(result), *level_views,
        _slider_update(result), layer,  # token maps: level, layer
        _slider_update(result), layer,  # inside a layer: level, layer
        gr.Dropdown(choices=runs, value=first_run), *insights(session, first_run),
        gr.Dropdown(choices=runs, value=first_run), *export_files(session),
    )


# ---------------------------------------------------------------- token maps / inside a layer

@friendly_errors
def pick_validation_image(session: Optional[Session], index: Any) -> Optional[Image.Image]:
    if session is None or session.data is None or index is None or index == "":
        return None
    position = views.choice_index(index, len(session.data.val), "validation image")
    return session.data.val[position].thumbnail(views.PICKED_IMAGE_SIDE)


def _input_image(path: Any) -> Image.Image:
    """The image a visitor sent to token maps / inspect, checked like a zip's images, at most 1024 px a side."""
    if not path:
        raise UserError("Pick a validation image or an example photo, or upload an image.")
    if not isinstance(path, str) or not Path(path).is_file():
        raise UserError("Image: send the image as an uploaded file (PNG or JPEG).")
    budget, name = Budget.from_env(), upload_name(path)
    try:
        budget.check_image_file(Path(path), name)
        return read_image(Path(path), name, Limits.from_env().max_image_pixels, max_side=INPUT_IMAGE_SIDE)
    except ValueError:
        discard_upload(path)  # refused: it must not keep its disk space
        raise


@friendly_errors
def pick_example_photo(name: Any) -> Optional[Image.Image]:
    return example_photos().get(name) if isinstance(name, str) and name else None


def _level_schedule(result: Any, level: Any) -> list[int]:
    return list(result.levels[_level_index(result, level)].schedule)


def _run_dir(result: Any, method: str, level: Any) -> Path:
    """The first seed's run whose model gives `method` ("pyra" | "tome") its accuracy at `level`."""
    try:
        return Path(result.run_for(method, _level_index(result, level)))
    except KeyError:
        raise UserError(f"this comparison has no {method_label(method)} run") from None


def _tokens_table(tokens: list[int], schedule: list[int]) -> pd.DataFrame:
    rows = [[i + 1, tokens[i], schedule[i], tokens[i + 1]] for i in range(len(schedule))]
    return pd.DataFrame(rows, columns=["layer", "tokens in", "merged (r)", "tokens out"])


@friendly_errors
def show_token_maps(session: Optional[Session], image: Optional[str], level: Any, layer: Any) -> tuple:
    """ToMe + LoRA and PYRA + LoRA merged-token maps of `image` at one level (both runs, first seed)."""
    image = _input_image(image)
    result = _require_result(session)
    schedule = _level_schedule(result, level)
    maps = {method: token_maps(_run_dir(result, method, level), image, schedule=schedule, method=method)
            for method in ("tome", "pyra")}
    tome_layer, pyra_layer = show_layer_maps(maps, layer)
    per_layer = tome_layer is not None
    return (maps, maps["tome"].panel, maps["pyra"].panel, gr.Slider(visible=per_layer),
            gr.Image(tome_layer, visible=per_layer), gr.Image(pyra_layer, visible=per_layer),
            _tokens_table(list(maps["pyra"].tokens), list(maps["pyra"].schedule)))


@friendly_errors
def show_layer_maps(maps: Optional[dict], layer: Any) -> tuple:
    """The two maps after one layer (1-based), from the cached token maps (None without per-layer images)."""
    if not maps:
        return None, None
    images = []
    for method in ("tome", "pyra"):
        layers = getattr(maps[method], "layers", None)
        images.append(layers[views.slider_index(layer or 1, 1, len(layers), "layer") - 1] if layers else None)
    return tuple(images)


@friendly_errors
def inspect(session: Optional[Session], image: Optional[str], model_choice: Any, level: Any,
            layer: Any) -> tuple:
    """Inside one layer: sets A/B, chosen merges, PYRA gates, and the formulas."""
    image = _input_image(image)
    result = _require_result(session)
    method = "pyra" if "PYRA" in str(model_choice or "PYRA") else "tome"
    schedule = _level_schedule(result, level)
    layer = views.slider_index(layer or 1, 1, len(schedule), "layer")
    view = inspect_layer(_run_dir(result, method, level), image, layer - 1, schedule=schedule,
                         method=method)
    pairs = pd.DataFrame(view.pairs, columns=["source_token", "destination_token", "similarity", "token_gate"])
    summary = (f"**Layer {layer}**: {view.tokens_in} tokens in, {view.r} merged "
               f"({method_label(method)}).")
    if view.gate_histogram is None and method == "pyra" and view.r:
        summary += " No gate values were recorded for this layer."
    return view.image, view.gate_histogram, pairs, summary + "\n\n" + view.explanation


# ---------------------------------------------------------------- insights / export

@friendly_errors
def insights(session: Optional[Session], run_key: Optional[str]) -> tuple:
    """Training curve of one run, confusion matrix of its method, per-class accuracy of all methods."""
    result = session.result if session is not None else None
    if result is None or not run_key or not isinstance(run_key, str):
        return None, None, None, "No comparison yet."
    method = run_key.partition("@")[0]
    label = method_label(method)
    curve = training_curves(result.histories.get(run_key, []))
    reports = {m: result.reports[m] for m in METHOD_ORDER if m in (result.reports or {})}
    confusion, notes = None, []
    if method in reports:
        report = reports[method]
        confusion = confusion_matrix_figure(report["confusion"], report.get("classes") or result.classes,
                                            f"{label}: confusion at the target level")
    else:
        notes.append(f"No confusion matrix was recorded for {label}.")
    per_class = None
    if reports:
        per_class = per_class_accuracy_figure({m: r["per_class_accuracy"] for m, r in reports.items()})
        notes.insert(0, "Confusion matrix and per-class accuracy: measured at the trained target level "
                        "(the last compression level), first seed.")
    else:
        notes.append("This comparison has no per-class reports.")
    return curve, confusion, per_class, " ".join(notes)


@friendly_errors
def tsne(session: Optional[Session]) -> tuple:
    """t-SNE of the validation features each method produced at the target level (stored by the sweep)."""
    result = _require_result(session)
    try:
        stored = result.features()
    except (OSError, KeyError) as error:
        raise UserError(f"this comparison stored no validation features ({error}); train it again") from None
    labels = stored.pop("labels", None)
    features = {method: stored[method] for method in METHOD_ORDER
                if stored.get(method) is not None and len(stored[method])}
    if labels is None or not features:
        raise UserError("this comparison stored no validation features; train it again")
    if len(labels) < 4:
        raise UserError(f"t-SNE needs at least 4 validation images; this dataset has {len(labels)}.")
    figure = tsne_figure(features, labels, result.classes)
    return figure, (f"Pooled features of the {len(labels)} validation images, each model at the trained target "
                    "level (first seed). Points that cluster by colour are easy to separate.")


@friendly_errors
def export_files(session: Optional[Session]) -> tuple:
    """compare.csv + compare.json of the latest comparison."""
    result = session.result if session is not None else None
    if result is None:
        return (None,)
    files = [str(Path(result.out_dir) / name) for name in ("compare.csv", "compare.json")]
    return ([f for f in files if Path(f).is_file()] or None,)


@friendly_errors
def export_run(session: Optional[Session], run_key: Optional[str]) -> tuple:
    """Zip one run's adapter (config.json + adapter.safetensors + metrics.json) for download."""
    result = _require_result(session)
    if not isinstance(run_key, str) or run_key not in result.run_dirs:
        raise UserError("Choose a run to export.")
    name = f"pyra-{run_key.replace('@', '-seed').replace(':', '-')}.zip"
    path = views.export_run_zip(Path(result.run_dirs[run_key]), session.workdir / "exports" / name)
    return str(path), views.python_snippet(run_key, name)
