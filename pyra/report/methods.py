"""The models a comparison sets side by side: key, label, colour and order, declared once.

Every table, chart, message and the app read these; a row of a comparison carries the key.
"""
from __future__ import annotations

from dataclasses import dataclass

from plotly.colors import qualitative

from pyra.method.schedule import Method


@dataclass(frozen=True)
class ComparedModel:
    key: str  # the row name in compare.json
    label: str  # what a reader sees
    colour: str  # its colour in every chart
    merge: Method  # the merge method its accuracy is measured with
    trained: bool  # a model is trained for it (training-free ToMe reuses the uncompressed one)


COMPARED_MODELS = (
    ComparedModel("uncompressed", "LoRA, uncompressed", "#444444", "none", True),
    ComparedModel("tome_free", "ToMe training-free", "#9aa6b2", "tome", False),
    ComparedModel("tome", "ToMe + LoRA", "#1f77b4", "tome", True),
    ComparedModel("pyra", "PYRA + LoRA", "#d62728", "pyra", True),
)
METHOD_ORDER = tuple(model.key for model in COMPARED_MODELS)
METHOD_LABELS = {model.key: model.label for model in COMPARED_MODELS}
MERGE_METHODS = {model.key: model.merge for model in COMPARED_MODELS}
"""Row name -> merge method its accuracy is measured with, in row order."""
TRAINED_METHODS = {model.key: model.merge for model in COMPARED_MODELS if model.trained}
"""Row name -> merge method the model is trained with."""
MERGING_METHODS = tuple(key for key, merge in TRAINED_METHODS.items() if merge != "none")
"""The trained models that merge tokens: ToMe + LoRA and PYRA + LoRA."""
_COLOURS = {model.key: model.colour for model in COMPARED_MODELS}
PALETTE = qualitative.Plotly


def method_label(key: str) -> str:
    """The label of a compared model's key (an unknown key is its own label)."""
    return METHOD_LABELS.get(key, key)


def method_colour(key: str, position: int) -> str:
    """The designed colour of a compared model; others take the palette's colour at `position`."""
    return _COLOURS.get(key, PALETTE[position % len(PALETTE)])
