"""6. Insights: one run's training curve, confusion matrix and per-class accuracy, and a t-SNE of the
validation features of every model."""
from __future__ import annotations

from types import SimpleNamespace
from typing import Optional

import gradio as gr

from pyra.report.methods import METHOD_ORDER, method_label
from pyra.report.plots import confusion_matrix_figure, per_class_accuracy_figure, training_curves, tsne_figure
from pyra_app import inputs, views
from pyra_app.context import first_run, has_result, require_result
from pyra_app.messages import UserError, friendly_errors
from pyra_app.session import Session
from pyra_app.tab_token_maps import MODEL_CONCURRENCY


def build(c: SimpleNamespace) -> None:
    c.ins_run = inputs.Dropdown([], label="Run", value=None)
    c.ins_note = gr.Markdown(elem_id="ins-note")
    with gr.Row():
        c.ins_curve = gr.Plot(label="Training curve")
        c.ins_confusion = gr.Plot(label="Confusion matrix")
    c.ins_per_class = gr.Plot(label="Per-class accuracy")
    c.tsne_btn = gr.Button("Compute t-SNE of the validation features")
    c.tsne_note = gr.Markdown()
    c.tsne_plot = gr.Plot(label="t-SNE")


def wire(c: SimpleNamespace, trained: list) -> None:
    shown = [c.ins_curve, c.ins_confusion, c.ins_per_class, c.ins_note]
    c.ins_run.input(insights, [c.session, c.ins_run], shown, api_visibility="private")
    c.tsne_btn.click(tsne, [c.session], [c.tsne_plot, c.tsne_note], api_name="tsne",
                     concurrency_limit=MODEL_CONCURRENCY, concurrency_id="model")
    for job in trained:
        job.success(refresh, [c.session], [c.ins_run, *shown], api_visibility="private")


@friendly_errors
def refresh(session: Optional[Session]) -> tuple:
    """The session's runs to choose from, and the first PYRA run's insights."""
    if not has_result(session):
        return tuple(gr.skip() for _ in range(5))
    run = first_run(session)
    return (gr.Dropdown(choices=views.run_choices(session.result.run_dirs), value=run), *insights(session, run))


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
    result = require_result(session)
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
