"""5. Inside a layer: set A / set B, the merges chosen, PYRA's gates and the formulas, for one layer."""
from __future__ import annotations

from types import SimpleNamespace
from typing import Any, Optional

import gradio as gr
import pandas as pd

from pyra.report.methods import method_label
from pyra.report.traces import inspect_layer
from pyra_app import image_picker, inputs
from pyra_app.context import input_image, level_and_layer_sliders, level_schedule, require_result, run_dir
from pyra_app.messages import friendly_errors
from pyra_app.session import Session
from pyra_app.settings import slider_index
from pyra_app.tab_compare import MAX_LEVEL
from pyra_app.tab_token_maps import MAX_LAYER, MODEL_CONCURRENCY

LATEX = [{"left": "$$", "right": "$$", "display": True}, {"left": "$", "right": "$", "display": False}]
PAIR_HEADERS = ["source_token", "destination_token", "similarity", "token_gate"]
MODELS = {"PYRA + LoRA": "pyra", "ToMe + LoRA": "tome"}


def build(c: SimpleNamespace, photos: list[str]) -> None:
    with gr.Row():
        with gr.Column(scale=1):
            image_picker.build(c, "il", photos)
            c.il_method = inputs.Radio(list(MODELS), value="PYRA + LoRA", label="Model")
            c.il_level = inputs.Slider(0, MAX_LEVEL, value=0, step=1, interactive=False, label="Compression level")
            c.il_layer = inputs.Slider(1, MAX_LAYER, value=1, step=1, interactive=False, label="Layer")
            c.il_btn = gr.Button("Inspect layer", variant="primary")
        with gr.Column(scale=2):
            c.il_picture = gr.Image(label="Set A (orange) / set B (blue) and the merges chosen", interactive=False)
            c.il_histogram = gr.Plot(label="PYRA channel gate")
            c.il_pairs = gr.Dataframe(headers=PAIR_HEADERS, label="Merged pairs", interactive=False, max_height=300)
    c.il_text = gr.Markdown(latex_delimiters=LATEX, elem_id="il-text")


def wire(c: SimpleNamespace, loaded: list, trained: list) -> None:
    image_picker.wire(c, "il", loaded)
    inspect_inputs = [c.session, c.il_image, c.il_method, c.il_level, c.il_layer]
    inspect_outputs = [c.il_picture, c.il_histogram, c.il_pairs, c.il_text]
    c.il_btn.click(inspect, inspect_inputs, inspect_outputs, api_name="inspect_layer",
                   concurrency_limit=MODEL_CONCURRENCY, concurrency_id="model")
    c.il_layer.release(inspect, inspect_inputs, inspect_outputs, concurrency_id="model", api_visibility="private")
    for job in trained:
        job.success(level_and_layer_sliders, [c.session], [c.il_level, c.il_layer], api_visibility="private")


@friendly_errors
def inspect(session: Optional[Session], image: Optional[str], model: Any, level: Any, layer: Any) -> tuple:
    """Inside one layer: sets A/B, chosen merges, PYRA gates, and the formulas."""
    image = input_image(image)
    result = require_result(session)
    method = "pyra" if "PYRA" in str(model or "PYRA") else "tome"
    schedule = level_schedule(result, level)
    layer = slider_index(layer or 1, 1, len(schedule), "layer")
    view = inspect_layer(run_dir(result, method, level), image, layer - 1, schedule=schedule, method=method)
    pairs = pd.DataFrame(view.pairs, columns=PAIR_HEADERS)
    summary = f"**Layer {layer}**: {view.tokens_in} tokens in, {view.r} merged ({method_label(method)})."
    if view.gate_histogram is None and method == "pyra" and view.r:
        summary += " No gate values were recorded for this layer."
    return view.image, view.gate_histogram, pairs, summary + "\n\n" + view.explanation
