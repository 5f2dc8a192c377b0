"""4. Token maps: which patches ToMe + LoRA and PYRA + LoRA merged, layer by layer, for one image."""
from __future__ import annotations

import time
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any, Optional

import gradio as gr
import pandas as pd

from pyra.report.methods import MERGING_METHODS
from pyra.report.token_maps import MAP_MODES
from pyra.report.traces import token_maps
from pyra_app import image_picker, inputs
from pyra_app.context import input_image, level_and_layer_sliders, level_schedule, require_result, run_dir
from pyra_app.messages import friendly_errors
from pyra_app.session import Session
from pyra_app.settings import slider_index
from pyra_app.tab_compare import MAX_LEVEL

MAX_LAYER = 48  # the layer slider's span before a comparison narrows it
MODEL_CONCURRENCY = 2  # token maps / layer inspection / t-SNE at once (each loads a model)
TOKEN_HEADERS = ["layer", "tokens in", "merged (r)", "tokens out"]
PLAY_STEP_S = 0.8
EXPLANATION = ("Each token after a layer holds one or more image patches. **Outlined over the photo**: every group "
               "of two or more merged patches is tinted and outlined; untinted squares are patches still on their own. "
               "**Mean colour**: every group painted with its average colour. ToMe + LoRA and PYRA + LoRA merge the "
               "same number of tokens per layer; where they differ is which patches they put together.")


def build(c: SimpleNamespace, photos: list[str]) -> None:
    with gr.Row():
        with gr.Column(scale=1, min_width=280):
            image_picker.build(c, "tm", photos)
            c.tm_level = inputs.Slider(0, MAX_LEVEL, value=0, step=1, interactive=False, label="Compression level")
            c.tm_btn = gr.Button("Show token maps", variant="primary")
            c.tm_tokens = gr.Dataframe(headers=TOKEN_HEADERS, label="Tokens per layer", interactive=False)
        with gr.Column(scale=3, min_width=300):
            gr.Markdown(EXPLANATION)
            with gr.Row():
                c.tm_mode = inputs.Radio([(text, key) for key, text in MAP_MODES.items()], value="photo",
                                         label="Draw the groups as", elem_id="tm-mode")
                c.tm_layer = inputs.Slider(1, MAX_LAYER, value=1, step=1, label="Layer", interactive=False,
                                           elem_id="tm-layer")
                c.tm_play = gr.Button("▶ Play through the layers", size="sm", elem_id="tm-play")
            with gr.Row():
                c.tm_tome_layer = gr.Image(label="ToMe + LoRA at this layer", show_label=False, interactive=False,
                                           elem_id="tm-tome-layer", min_width=300)
                c.tm_pyra_layer = gr.Image(label="PYRA + LoRA at this layer", show_label=False, interactive=False,
                                           elem_id="tm-pyra-layer", min_width=300)
            with gr.Accordion("All layers at once", open=False):
                with gr.Row():
                    c.tm_tome = gr.Image(label="ToMe + LoRA: every layer", interactive=False, elem_id="tm-tome")
                    c.tm_pyra = gr.Image(label="PYRA + LoRA: every layer", interactive=False, elem_id="tm-pyra")
    c.maps = gr.State(None)  # the last token maps, so the layer slider needs no recomputation


def wire(c: SimpleNamespace, loaded: list, trained: list) -> None:
    image_picker.wire(c, "tm", loaded)
    drawn = c.tm_btn.click(show_token_maps, [c.session, c.tm_image, c.tm_level, c.tm_layer],
                           [c.maps, c.tm_tome, c.tm_pyra, c.tm_layer, c.tm_tome_layer, c.tm_pyra_layer, c.tm_tokens],
                           api_name="token_maps", concurrency_limit=MODEL_CONCURRENCY, concurrency_id="model")
    at_layer = ([c.maps, c.tm_layer, c.tm_mode], [c.tm_tome_layer, c.tm_pyra_layer])
    drawn.success(show_layer_maps, *at_layer, show_progress="hidden", api_visibility="private")
    for control in (c.tm_layer, c.tm_mode):
        control.change(show_layer_maps, *at_layer, show_progress="hidden", api_visibility="private")
    c.tm_play.click(play_layers, [c.maps], [c.tm_layer], api_visibility="private", show_progress="hidden")
    for job in trained:
        job.success(level_and_layer_sliders, [c.session], [c.tm_level, c.tm_layer], api_visibility="private")


def _tokens_table(tokens: list[int], schedule: list[int]) -> pd.DataFrame:
    rows = [[i + 1, tokens[i], schedule[i], tokens[i + 1]] for i in range(len(schedule))]
    return pd.DataFrame(rows, columns=TOKEN_HEADERS)


@friendly_errors
def show_token_maps(session: Optional[Session], image: Optional[str], level: Any, layer: Any) -> tuple:
    """ToMe + LoRA and PYRA + LoRA merged-token maps of `image` at one level (both runs, first seed)."""
    image = input_image(image)
    result = require_result(session)
    schedule = level_schedule(result, level)
    maps = {method: token_maps(run_dir(result, method, level), image, schedule=schedule, method=method)
            for method in MERGING_METHODS}
    tome_layer, pyra_layer = show_layer_maps(maps, layer)
    per_layer = tome_layer is not None
    return (maps, maps["tome"].panel, maps["pyra"].panel, gr.Slider(visible=per_layer),
            gr.Image(tome_layer, visible=per_layer), gr.Image(pyra_layer, visible=per_layer),
            _tokens_table(list(maps["pyra"].tokens), list(maps["pyra"].schedule)))


@friendly_errors
def show_layer_maps(maps: Optional[dict], layer: Any, mode: Any = "photo") -> tuple:
    """The two maps after one layer (1-based) in `mode`, from the cached token maps (None without them)."""
    if not maps:
        return None, None
    images = []
    for method in MERGING_METHODS:
        layers = maps[method].outlined if mode == "photo" else maps[method].layers
        images.append(layers[slider_index(layer or 1, 1, len(layers), "layer") - 1] if layers else None)
    return tuple(images)


def play_layers(maps: Optional[dict]) -> Iterator[Any]:
    """Move the layer slider through every layer, one step every PLAY_STEP_S seconds."""
    if not maps:
        raise gr.Error("Press Show token maps first.", print_exception=False)
    for layer in range(1, len(maps["pyra"].layers) + 1):
        yield gr.Slider(value=layer)
        time.sleep(PLAY_STEP_S)
