"""Visualisation entry point: token maps (PIL images, `pyra.token_maps`) and plots (plotly
figures, `pyra.plots`). Pure functions: nothing is displayed or written."""
from pyra.plots import (
    accuracy_vs_throughput,
    confusion_matrix_figure,
    gate_histogram,
    per_class_accuracy_figure,
    training_curves,
    tsne_figure,
)
from pyra.token_maps import layer_inspector, source_entering, token_map, token_map_panel

__all__ = [
    "token_map", "token_map_panel", "layer_inspector", "source_entering", "gate_histogram", "training_curves",
    "accuracy_vs_throughput", "confusion_matrix_figure", "per_class_accuracy_figure", "tsne_figure",
]
