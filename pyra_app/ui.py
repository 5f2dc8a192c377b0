"""The PYRA Studio Gradio app: one module per tab (`tab_*`) builds its components and wires its own
events; this module puts the tabs together and launches them."""
from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import gradio as gr

from pyra.data.samples import example_photos, list_samples
from pyra_app import (
    inputs,
    memory,
    tab_compare,
    tab_data,
    tab_export,
    tab_insights,
    tab_layer,
    tab_token_maps,
    tab_train,
)
from pyra_app.budget import Budget
from pyra_app.context import end_of_session
from pyra_app.session import end_session, sweep_idle_sessions, work_root

TITLE = "PYRA Studio"
INTRO = """# PYRA Studio
Adapt a pretrained Vision Transformer to your images with **LoRA**, compress it with **token merging**
(ToMe: fewer tokens per layer, so inference is faster) and recover the accuracy merging loses with
**PYRA** (learned re-activation of the merged tokens, Xiong et al., ECCV 2024).
Steps: **Data** → **Train** (or press *Quick demo*) → **Compare** → look inside with **Token maps** and **Inside a layer**.
"""
EXAMPLE_HINT = ("Every tab opens on a worked example (the Quick demo's models, shipped with the app): "
                "start with **3. Compare** or **4. Token maps**.")
CSS = ".pyra-status {min-height: 2.5em}"


def _layout(samples: list, photos: list[str]) -> SimpleNamespace:
    c = SimpleNamespace()
    with gr.Row(equal_height=True):
        with gr.Column(scale=4):
            gr.Markdown(INTRO)
        with gr.Column(scale=1, min_width=200):
            c.quick_top_btn = gr.Button("▶ Quick demo: train it yourself (about 3 min)", variant="primary",
                                        elem_id="quick-top")
            gr.Markdown(EXAMPLE_HINT)
    # an idle session's State is dropped (its delete callback removes the folder): clients without a heartbeat too
    c.session = gr.State(None, delete_callback=end_session, time_to_live=Budget.from_env().idle_seconds)
    with gr.Tabs() as c.tabs:
        with gr.Tab("1. Data"):
            tab_data.build(c, samples)
        with gr.Tab("2. Train", id=tab_train.TAB_ID):
            tab_train.build(c)
        with gr.Tab("3. Compare") as c.compare_tab:
            tab_compare.build(c)
        with gr.Tab("4. Token maps"):
            tab_token_maps.build(c, photos)
        with gr.Tab("5. Inside a layer"):
            tab_layer.build(c, photos)
        with gr.Tab("6. Insights"):
            tab_insights.build(c)
        with gr.Tab("7. Export"):
            tab_export.build(c)
    return c


def _wire(demo: gr.Blocks, c: SimpleNamespace) -> None:
    """Each tab wires its own events; those after a data load or a finished job refresh themselves."""
    loaded = tab_data.wire(c)
    trained, quick_loads = tab_train.wire(c, demo)
    loaded += quick_loads
    tab_compare.wire(c, trained)
    tab_token_maps.wire(c, loaded, trained)
    tab_layer.wire(c, loaded, trained)
    tab_insights.wire(c, trained)
    tab_export.wire(c, trained)
    demo.unload(end_of_session)


def build_demo() -> gr.Blocks:
    """The app, with nothing loaded yet (models load when a handler needs one)."""
    budget = Budget.from_env()
    memory.share_arenas()  # before any job thread starts
    sweep_idle_sessions(budget.idle_seconds)
    cache_sweep = int(min(600.0, budget.idle_seconds))  # Gradio's upload cache: swept this often, same idle limit
    with inputs.StudioBlocks(title=TITLE, delete_cache=(cache_sweep, int(budget.idle_seconds))) as demo:
        _wire(demo, _layout(list_samples(), list(example_photos())))
    demo.queue(default_concurrency_limit=4)
    return demo


def launch_kwargs() -> dict[str, Any]:
    """launch() arguments: host/port from GRADIO_SERVER_NAME/PORT (Gradio's defaults: 127.0.0.1:7860)."""
    budget = Budget.from_env()  # a bad PYRA_* limit stops the launch with its message, not a request later
    return {"allowed_paths": [str(work_root())], "css": CSS, "show_error": False,
            "max_file_size": budget.max_upload_bytes}
