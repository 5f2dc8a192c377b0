"""Plotly figures for runs and comparisons. Each function returns a go.Figure and shows nothing."""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots
from torch import Tensor

from pyra.report.methods import PALETTE, method_colour, method_label

_EXACT_TSNE_MAX = 500  # points up to which exact t-SNE beats Barnes-Hut on CPU


def gate_histogram(channel_gate: Tensor) -> go.Figure:
    """Histogram of PYRA channel-gate values in (0, 2) ([D], or any shape: values are flattened);
    the dashed line at 1 is "no re-activation"."""
    values = channel_gate.detach().float().cpu().numpy().reshape(-1)
    bins = dict(start=0.0, end=2.0, size=0.05)
    figure = go.Figure(go.Histogram(x=values, xbins=bins, marker_color="#7f7f7f", name="channels"))
    figure.add_vline(x=1.0, line_dash="dash", line_color="#d62728")
    figure.update_layout(
        title=f"PYRA channel gate ({values.size} channels)",
        xaxis=dict(title="gate value", range=[0, 2]),
        yaxis_title="channels",
        bargap=0.05,
    )
    return figure


def training_curves(history: Sequence[dict]) -> go.Figure:
    """Loss per step and, on a right axis, validation accuracy per epoch.

    history mixes step items {"step", "loss", "lr", "epoch"} and epoch items {"epoch",
    "val_accuracy"}, in any order. An epoch's accuracy is drawn at the last step logged with
    that epoch number; if some epoch has no such step, accuracies are drawn by epoch on a top
    axis instead (or on the bottom axis when there are no step items at all).
    """
    steps = sorted((item for item in history if "loss" in item and "step" in item), key=lambda item: item["step"])
    evals = sorted((item for item in history if "val_accuracy" in item and "epoch" in item), key=lambda e: e["epoch"])
    figure = make_subplots(specs=[[{"secondary_y": True}]])
    loss = go.Scatter(x=[s["step"] for s in steps], y=[s["loss"] for s in steps], mode="lines", name="training loss")
    figure.add_trace(loss.update(line_color="#1f77b4"), secondary_y=False)
    figure.update_layout(title="Training", xaxis_title="step" if steps else "epoch")
    figure.update_layout(legend=dict(orientation="h", y=-0.2))
    figure.update_yaxes(title_text="loss", secondary_y=False)
    if not evals:
        return figure
    last_step = {item["epoch"]: item["step"] for item in steps if "epoch" in item}  # steps are sorted
    epochs = [e["epoch"] for e in evals]
    by_step = bool(steps) and all(epoch in last_step for epoch in epochs)
    accuracy = [e["val_accuracy"] for e in evals]
    trace = go.Scatter(x=[last_step[e] for e in epochs] if by_step else epochs, y=accuracy, mode="lines+markers",
                       name="validation accuracy", line_color="#d62728", customdata=epochs,
                       hovertemplate="epoch %{customdata}: %{y}<extra></extra>")
    figure.add_trace(trace, secondary_y=True)
    if steps and not by_step:
        figure.data[-1].update(xaxis="x2")
        figure.update_layout(xaxis2=dict(title="epoch", overlaying="x", side="top"))
    figure.update_yaxes(title_text="validation accuracy", secondary_y=True, **_accuracy_axis(accuracy))
    return figure


def accuracy_vs_throughput(rows: Sequence[dict], highlight: Optional[dict] = None) -> go.Figure:
    """One line per method through its schedules: accuracy (asymmetric error bars from
    accuracy_low/accuracy_high) against throughput in images/s. `highlight` ({"method",
    "schedule_label"}) marks one point with a larger marker."""
    methods = list(dict.fromkeys(row["method"] for row in rows))
    figure = go.Figure()
    for position, method in enumerate(methods):
        points = sorted((row for row in rows if row["method"] == method), key=lambda row: row["throughput"])
        accuracy = np.array([row["accuracy"] for row in points], dtype=float)
        high = np.array([row.get("accuracy_high", row["accuracy"]) for row in points], dtype=float)
        low = np.array([row.get("accuracy_low", row["accuracy"]) for row in points], dtype=float)
        chosen = [_is_highlight(highlight, method, row["schedule_label"]) for row in points]
        figure.add_trace(go.Scatter(
            x=[row["throughput"] for row in points],
            y=accuracy,
            error_y=dict(type="data", symmetric=False, array=high - accuracy, arrayminus=accuracy - low, thickness=1),
            mode="lines+markers",
            name=method_label(method),
            line_color=method_colour(method, position),
            marker=dict(size=[18 if c else 8 for c in chosen], line=dict(width=[2 if c else 0 for c in chosen])),
            text=[row["schedule_label"] for row in points],
            hovertemplate="%{text}<br>%{x:.1f} img/s<br>accuracy %{y}<extra>" + method_label(method) + "</extra>",
        ))
    figure.update_layout(
        title="Accuracy vs throughput",
        xaxis_title="throughput (images/s)",
        yaxis=dict(title="accuracy", **_accuracy_axis([row["accuracy"] for row in rows])),
    )
    return figure


def confusion_matrix_figure(confusion: Sequence[Sequence[int]], classes: Sequence[str], title: str) -> go.Figure:
    """Heatmap of counts: rows are true classes (top to bottom), columns predicted classes."""
    counts = np.asarray(confusion)
    if counts.shape != (len(classes), len(classes)):
        size = len(classes)
        raise ValueError(f"confusion matrix is {counts.shape}, expected {size}x{size} for {size} classes")
    figure = go.Figure(go.Heatmap(
        z=counts, x=list(classes), y=list(classes), colorscale="Blues", texttemplate="%{z}",
        hovertemplate="true %{y}<br>predicted %{x}<br>%{z} images<extra></extra>",
    ))
    figure.update_layout(title=title, xaxis=dict(title="predicted", type="category"),
                         yaxis=dict(title="true", type="category", autorange="reversed"))
    return figure


def per_class_accuracy_figure(per_class: dict[str, dict[str, float]]) -> go.Figure:
    """Grouped bars: one bar series per method, one group per class."""
    classes = list(dict.fromkeys(name for scores in per_class.values() for name in scores))
    figure = go.Figure()
    for position, (method, scores) in enumerate(per_class.items()):
        figure.add_trace(go.Bar(x=classes, y=[scores.get(name) for name in classes], name=method_label(method),
                                marker_color=method_colour(method, position)))
    values = [v for scores in per_class.values() for v in scores.values()]
    figure.update_layout(title="Per-class accuracy", barmode="group", xaxis_title="class",
                         yaxis=dict(title="accuracy", **_accuracy_axis(values)))
    return figure


def tsne_figure(
    features_by_method: dict[str, np.ndarray], labels: np.ndarray, classes: Sequence[str], seed: int = 0
) -> go.Figure:
    """2-D t-SNE of each method's features ([n, D]), one subplot per method, coloured by class.

    labels: [n] class indices into `classes`. Perplexity min(30, (n - 1) / 3), PCA init, seeded.
    """
    from sklearn.manifold import TSNE

    labels = np.asarray(labels)
    if not features_by_method:
        raise ValueError("tsne_figure needs features for at least one method")
    methods = list(features_by_method)
    figure = make_subplots(rows=1, cols=len(methods), subplot_titles=[method_label(m) for m in methods])
    for column, method in enumerate(methods, start=1):
        features = np.asarray(features_by_method[method], dtype=np.float64)
        if features.ndim != 2 or features.shape[0] != labels.shape[0] or features.shape[0] < 4:
            raise ValueError(
                f"{method}: features must be [n, D] with n = {labels.shape[0]} (one per label) and n >= 4, "
                f"got {features.shape}"
            )
        perplexity = min(30.0, (features.shape[0] - 1) / 3)
        algorithm = "exact" if features.shape[0] <= _EXACT_TSNE_MAX else "barnes_hut"
        tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed, method=algorithm)
        embedded = tsne.fit_transform(features)
        for index, name in enumerate(classes):
            chosen = labels == index
            if not chosen.any():
                continue
            figure.add_trace(go.Scatter(
                x=embedded[chosen, 0], y=embedded[chosen, 1], mode="markers", name=name, legendgroup=name,
                showlegend=column == 1, marker=dict(size=6, color=PALETTE[index % len(PALETTE)]),
            ), row=1, col=column)
    figure.update_xaxes(showticklabels=False)
    figure.update_yaxes(showticklabels=False)
    figure.update_layout(title="t-SNE of features")
    return figure


def _is_highlight(highlight: Optional[dict], method: str, schedule_label: str) -> bool:
    if highlight is None:
        return False
    return (highlight.get("method"), highlight.get("schedule_label")) == (method, schedule_label)


def _accuracy_axis(values: Sequence[float]) -> dict:
    """Percent tick labels when accuracies are fractions."""
    finite = [v for v in values if v is not None and np.isfinite(v)]
    return {"tickformat": ".0%"} if finite and max(finite) <= 1.0 else {}
