"""Input components that pass what the visitor sent to the handler unchanged.

Gradio's own components check and convert values before a handler runs (bounds, rounding,
choices, decoding an image) and fail with Gradio's words, or with none at all over the HTTP
API. These subclasses leave that to the handlers, which validate every value themselves
(`pyra_app.views`) and answer in the app's words. `StudioBlocks` turns whatever can still
fail before a handler (a value that is not even of the component's data type) into a message
naming the field.
"""
from __future__ import annotations

from typing import Any, Optional

import gradio as gr

__all__ = ["Number", "Slider", "Dropdown", "Radio", "Checkbox", "Image", "StudioBlocks", "field_name"]


class Number(gr.Number):
    """A number field whose raw value (any JSON) reaches the handler."""

    def preprocess(self, payload: Any) -> Any:
        return payload


class Slider(gr.Slider):
    """A slider whose raw value reaches the handler (no bounds check, no rounding)."""

    def preprocess(self, payload: Any) -> Any:
        return payload


class Dropdown(gr.Dropdown):
    """A dropdown whose raw value reaches the handler (choices are checked there)."""

    def preprocess(self, payload: Any) -> Any:
        return payload


class Radio(gr.Radio):
    """Radio buttons whose raw value reaches the handler (choices are checked there)."""

    def preprocess(self, payload: Any) -> Any:
        return payload


class Checkbox(gr.Checkbox):
    """A checkbox whose raw value reaches the handler (which accepts only true or false)."""

    def preprocess(self, payload: Any) -> Any:
        return payload


class Image(gr.Image):
    """An image input that hands the handler the uploaded file's path, unopened, whatever `type` says.

    The handler decodes it under the app's pixel and size limits (`pyra.data.images.read_image`).
    No __init__ of its own: Gradio sends the browser the parameters of the class's own __init__, and a
    (*args, **kwargs) one would hide them all (the page then cannot draw the image).
    """

    def preprocess(self, payload: Any) -> Optional[str]:
        if payload is None:
            return None
        if not getattr(payload, "path", None):
            raise gr.Error(f"{field_name(self)}: send the image as an uploaded file (PNG or JPEG).",
                           print_exception=False)
        return str(payload.path)


def field_name(block: Any) -> str:
    """The name a visitor knows a component by: its label."""
    label = getattr(block, "label", None)
    return str(label) if label else "one of the inputs"


class StudioBlocks(gr.Blocks):
    """Blocks whose input processing fails with a message naming the field, never Gradio's internals."""

    async def preprocess_data(self, block_fn: Any, inputs: list[Any], state: Any, explicit_call: bool = False):
        try:
            return await super().preprocess_data(block_fn, inputs, state, explicit_call)
        except gr.Error:
            raise
        except Exception:
            raise gr.Error(f"{_unreadable(block_fn.inputs, inputs)}: this value could not be read. Send the kind "
                           "of value the field shows (a number, a text, an uploaded file).",
                           print_exception=False) from None


def _unreadable(blocks: list[Any], values: list[Any]) -> str:
    """The label of the input Gradio could not process: the first whose value does not fit its data
    type, else the first that names a file (which Gradio refuses unless it was uploaded here)."""
    if len(values) < len(blocks):
        return "the request (it has fewer values than the event's inputs)"
    pairs = [(block, value) for block, value in zip(blocks, values)
             if value is not None and not getattr(block, "stateful", False)]
    for block, value in pairs:
        model = getattr(block, "data_model", None)
        if model is None:
            continue
        try:
            model.model_validate(value, context={"validate_meta": True})
        except Exception:
            return field_name(block)
    return next((field_name(block) for block, value in pairs if isinstance(value, dict) and "path" in value),
                "one of the inputs")
