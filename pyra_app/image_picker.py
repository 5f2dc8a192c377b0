"""The image chooser of the Token maps and Inside-a-layer tabs: a validation image of the session's
data, an example photo, or an upload."""
from __future__ import annotations

from types import SimpleNamespace
from typing import Any, Optional

import gradio as gr
from PIL import Image

from pyra.data.samples import example_photos
from pyra_app import inputs
from pyra_app.messages import friendly_errors
from pyra_app.session import Session
from pyra_app.settings import choice_index

PICKED_IMAGE_SIDE = 512  # pixels: a validation image picked for token maps (the model sees at most 448)


def build(c: SimpleNamespace, prefix: str, photos: list[str]) -> None:
    """`c.<prefix>_val`, `c.<prefix>_photo` and `c.<prefix>_image`."""
    with gr.Row():
        setattr(c, f"{prefix}_val", inputs.Dropdown([], label="Validation image", value=None, elem_id=f"{prefix}-val"))
        setattr(c, f"{prefix}_photo", inputs.Dropdown(photos, label="Example photo", value=None, elem_id=f"{prefix}-photo"))
    setattr(c, f"{prefix}_image", inputs.Image(label="Image (or upload your own)", height=220,
                                               sources=["upload", "clipboard"], type="filepath",
                                               elem_id=f"{prefix}-image"))


def wire(c: SimpleNamespace, prefix: str, loaded: list) -> None:
    """Picking fills the image; every data load refreshes the validation choices."""
    val, photo, image = (getattr(c, f"{prefix}_{name}") for name in ("val", "photo", "image"))
    val.input(pick_validation_image, [c.session, val], image, api_visibility="private")
    photo.input(pick_example_photo, photo, image, api_visibility="private")
    for load in loaded:
        load.success(validation_choices, [c.session], val, api_visibility="private")


def validation_choices(session: Optional[Session]) -> gr.Dropdown:
    """The session's validation images as dropdown choices."""
    data = session.data if session is not None else None
    choices = [] if data is None else [(f"{r.name} ({data.classes[r.label]})", i) for i, r in enumerate(data.val)]
    return gr.Dropdown(choices=choices, value=None)


@friendly_errors
def pick_validation_image(session: Optional[Session], index: Any) -> Optional[Image.Image]:
    if session is None or session.data is None or index is None or index == "":
        return None
    position = choice_index(index, len(session.data.val), "validation image")
    return session.data.val[position].thumbnail(PICKED_IMAGE_SIDE)


@friendly_errors
def pick_example_photo(name: Any) -> Optional[Image.Image]:
    return example_photos().get(name) if isinstance(name, str) and name else None
