"""The PYRA Studio Gradio app: layout first, then event wiring. Handlers live in `handlers`."""
from __future__ import annotations

import os
from types import SimpleNamespace
from typing import Any

import gradio as gr

from pyra.data.samples import example_photos, list_samples
from pyra_app import handlers as h
from pyra_app import inputs, views
from pyra_app.budget import Budget
from pyra_app.session import end_session, sweep_idle_sessions, work_root

TITLE = "PYRA Studio"
INTRO = """# PYRA Studio
Adapt a pretrained Vision Transformer to your images with **LoRA**, compress it with **token merging**
(ToMe: fewer tokens per layer, so inference is faster) and recover the accuracy merging loses with
**PYRA** (learned re-activation of the merged tokens, Xiong et al., ECCV 2024).
Steps: **Data** → **Train** (or press *Quick demo*) → **Compare** → look inside with **Token maps** and **Inside a layer**.
"""
BACKBONES = ["default", "vit_tiny_patch16_224", "vit_small_patch16_224", "deit_small_patch16_224",
             "vit_base_patch16_224", "random:vit_tiny_patch16_224"]
WEIGHT_TYPES = [".safetensors", ".pth", ".pt", ".bin"]
LATEX = [{"left": "$$", "right": "$$", "display": True}, {"left": "$", "right": "$", "display": False}]
TRAIN_CONCURRENCY = int(os.environ.get("PYRA_TRAIN_CONCURRENCY", "1"))  # training jobs at once, all sessions
MODEL_CONCURRENCY = 2  # token maps / layer inspection / t-SNE at once (each loads a model)
CSS = ".pyra-status {min-height: 2.5em}"
MAX_LEVELS = views.MAX_LEVELS  # the Train tab's largest number of compression levels
# Before training, level and layer sliders span every value a comparison can have, so API calls made
# without /results first are not refused by Gradio's bounds check; /results narrows them.
MAX_LEVEL, MAX_LAYER = MAX_LEVELS - 1, 48


# ---------------------------------------------------------------- layout

def _data_tab(c: SimpleNamespace, samples: list) -> None:
    with gr.Row():
        with gr.Column(scale=1):
            c.sample = inputs.Dropdown(views.sample_choices(samples), value=samples[0].name if samples else None,
                                       label="Built-in sample")
            c.load_sample_btn = gr.Button("Load sample", variant="primary")
            c.zip_file = gr.File(label="...or upload a zip: one folder of images per class", file_types=[".zip"],
                                 type="filepath", elem_id="zip-upload")
            with gr.Accordion("Options", open=False):
                c.max_per_class = inputs.Number(0, precision=0, minimum=0, label="Max images per class (0 = all)")
                c.val_fraction = inputs.Slider(0.1, 0.5, value=0.25, step=0.05,
                                               label="Validation share (samples with a fixed split keep theirs)")
        with gr.Column(scale=2):
            c.data_summary = gr.Markdown("No dataset loaded yet.", elem_id="data-summary")
            c.data_warnings = gr.Markdown()
            c.gallery = gr.Gallery(label="Preview: a few images per class", columns=6, height="auto",
                                   object_fit="contain", allow_preview=False)
            with gr.Row():
                c.counts = gr.Dataframe(headers=["class", "train images", "validation images"],
                                        label="Images per class", interactive=False, max_height=260)
                c.skipped = gr.Dataframe(headers=["file", "reason"], label="Skipped files", interactive=False,
                                         max_height=260, wrap=True)


def _train_tab(c: SimpleNamespace) -> None:
    with gr.Row():
        with gr.Column(scale=1):
            c.backbone = inputs.Dropdown(BACKBONES, value="default", allow_custom_value=True, label="Backbone",
                                         elem_id="backbone",
                                         info="'default': DINOv2 ViT-S/14 shipped offline. Or type any timm ViT name "
                                              "(weights from the hub, or the file below); 'random:NAME' = random init.")
            c.weights = gr.File(label="Local weights for that architecture (optional)", file_types=WEIGHT_TYPES,
                                type="filepath", height=90)
            with gr.Row():
                c.img_size = inputs.Number(0, precision=0, minimum=0, label="Image size, px (0 = automatic)",
                                           elem_id="img-size")
                c.lora_rank = inputs.Slider(1, views.MAX_LORA_RANK, value=views.TrainSettings.lora_rank, step=1, label="LoRA rank")
            c.schedule = inputs.Dropdown(["low", "high"], value="high", allow_custom_value=True,
                                         label="Target compression",
                                         info="low / high (the paper's), a FLOPs ratio like 2.5, r per layer like 4, "
                                              "or a list 8,6,4,...")
            defaults = views.TrainSettings()
            with gr.Row():
                c.epochs = inputs.Slider(1, views.MAX_EPOCHS, value=defaults.epochs, step=1, label="Epochs",
                                         elem_id="epochs")
                c.batch_size = inputs.Number(defaults.batch_size, precision=0, minimum=1, label="Batch size")
            with gr.Row():
                c.lr = inputs.Number(defaults.lr, label="Learning rate (LoRA + head)")
                c.pyra_lr = inputs.Number(defaults.pyra_lr, label="PYRA learning rate")
            with gr.Accordion("Training protocol, repeats and measurement", open=False):
                c.protocol = inputs.Radio(views.PROTOCOL_CHOICES, value=defaults.protocol, label="Training protocol",
                                          elem_id="protocol",
                                          info="Elastic trains ToMe + LoRA and PYRA + LoRA once each for every "
                                               "compression level; per level trains one model per level and method.")
                c.seeds = gr.Textbox("0", label="Seeds", info="e.g. 0, 1, 2: one training per seed and method; "
                                                             "intervals over seeds need at least 2")
                c.num_levels = inputs.Slider(2, MAX_LEVELS, value=5, step=1, label="Compression levels to measure",
                                             elem_id="num-levels")
                c.bench_repeats = inputs.Slider(1, views.MAX_BENCH_REPEATS, value=5, step=1,
                                                label="Speed measurement repeats", elem_id="bench-repeats")
        with gr.Column(scale=2):
            gr.Markdown("Trains three models on the loaded data: LoRA uncompressed, ToMe + LoRA and PYRA + LoRA. "
                        "The two merging models are trained **elastically**: every step merges at a level between "
                        "uncompressed and the target (the uncompressed pass teaches the compressed ones), so one "
                        "model is trained for every position of the Compare tab's slider. Each model's head starts "
                        "from a logistic regression on the backbone's features. Then accuracy and speed are "
                        "measured at every level. **Quick demo**: Fashion-MNIST sample (100 training and 300 "
                        "validation images), default backbone, 2 epochs: about 3 minutes on 2 CPU cores.")
            with gr.Row():
                c.quick_btn = gr.Button("Quick demo", variant="secondary")
                c.train_btn = gr.Button("Train and compare", variant="primary", elem_id="train-btn")
                c.stop_btn = gr.Button("Stop", variant="stop", interactive=False, elem_id="stop-btn")
            c.status = gr.Markdown("Load data, then press **Train and compare**.", elem_classes="pyra-status",
                                   elem_id="train-status")
            c.losses = gr.Plot(label="Training loss", elem_id="loss-chart")


def _compare_tab(c: SimpleNamespace) -> None:
    c.level = inputs.Slider(0, MAX_LEVEL, value=0, step=1, interactive=False,
                            label="Compression level (available after training)", elem_id="level-slider")
    c.level_text = gr.Markdown(elem_id="level-text")
    c.table = gr.Dataframe(headers=views.COMPARE_HEADERS, label="At this level", interactive=False, wrap=True,
                           elem_id="compare-table")
    gr.Markdown(views.TABLE_NOTE)
    c.verdicts = gr.Markdown(elem_id="verdicts")
    c.hint = gr.Markdown()
    c.chart = gr.Plot(label="Accuracy vs throughput (the current level is enlarged)", elem_id="compare-chart")


def _image_picker(c: SimpleNamespace, prefix: str, photos: list[str]) -> None:
    with gr.Row():
        setattr(c, f"{prefix}_val", inputs.Dropdown([], label="Validation image", value=None))
        setattr(c, f"{prefix}_photo", inputs.Dropdown(photos, label="Example photo", value=None))
    setattr(c, f"{prefix}_image", inputs.Image(label="Image (or upload your own)", height=220,
                                               sources=["upload", "clipboard"]))


def _token_tab(c: SimpleNamespace, photos: list[str]) -> None:
    with gr.Row():
        with gr.Column(scale=1):
            _image_picker(c, "tm", photos)
            c.tm_level = inputs.Slider(0, MAX_LEVEL, value=0, step=1, interactive=False, label="Compression level")
            c.tm_btn = gr.Button("Show token maps", variant="primary")
            c.tm_tokens = gr.Dataframe(headers=["layer", "tokens in", "merged (r)", "tokens out"],
                                       label="Tokens per layer", interactive=False)
        with gr.Column(scale=2):
            gr.Markdown("Each tile paints every merged group of patches with its mean colour: large flat areas "
                        "are tokens that absorbed many patches.")
            with gr.Row():
                c.tm_tome = gr.Image(label="ToMe + LoRA: every layer", interactive=False)
                c.tm_pyra = gr.Image(label="PYRA + LoRA: every layer", interactive=False)
            c.tm_layer = inputs.Slider(1, MAX_LAYER, value=1, step=1, label="Layer", interactive=False)
            with gr.Row():
                c.tm_tome_layer = gr.Image(label="ToMe + LoRA after this layer", interactive=False, height=260)
                c.tm_pyra_layer = gr.Image(label="PYRA + LoRA after this layer", interactive=False, height=260)


def _layer_tab(c: SimpleNamespace, photos: list[str]) -> None:
    with gr.Row():
        with gr.Column(scale=1):
            _image_picker(c, "il", photos)
            c.il_method = inputs.Radio(["PYRA + LoRA", "ToMe + LoRA"], value="PYRA + LoRA", label="Model")
            c.il_level = inputs.Slider(0, MAX_LEVEL, value=0, step=1, interactive=False, label="Compression level")
            c.il_layer = inputs.Slider(1, MAX_LAYER, value=1, step=1, interactive=False, label="Layer")
            c.il_btn = gr.Button("Inspect layer", variant="primary")
        with gr.Column(scale=2):
            c.il_picture = gr.Image(label="Set A (orange) / set B (blue) and the merges chosen", interactive=False)
            c.il_histogram = gr.Plot(label="PYRA channel gate")
            c.il_pairs = gr.Dataframe(headers=["source_token", "destination_token", "similarity", "token_gate"],
                                      label="Merged pairs", interactive=False, max_height=300)
    c.il_text = gr.Markdown(latex_delimiters=LATEX)


def _insights_tab(c: SimpleNamespace) -> None:
    c.ins_run = inputs.Dropdown([], label="Run", value=None)
    c.ins_note = gr.Markdown()
    with gr.Row():
        c.ins_curve = gr.Plot(label="Training curve")
        c.ins_confusion = gr.Plot(label="Confusion matrix")
    c.ins_per_class = gr.Plot(label="Per-class accuracy")
    c.tsne_btn = gr.Button("Compute t-SNE of the validation features")
    c.tsne_note = gr.Markdown()
    c.tsne_plot = gr.Plot(label="t-SNE")


def _export_tab(c: SimpleNamespace) -> None:
    with gr.Row():
        with gr.Column():
            c.ex_run = inputs.Dropdown([], label="Run to export", value=None)
            c.ex_btn = gr.Button("Build adapter zip", variant="primary")
            c.ex_zip = gr.File(label="Adapter: config.json + adapter.safetensors + metrics.json", interactive=False)
        with gr.Column():
            c.ex_tables = gr.File(label="Comparison: compare.csv and compare.json", interactive=False,
                                  file_count="multiple")
    c.ex_code = gr.Code(views.python_snippet("pyra@0", "pyra-pyra-seed0.zip"), language="python",
                        label="Load it in Python", interactive=False)


def _layout(samples: list, photos: list[str]) -> SimpleNamespace:
    c = SimpleNamespace()
    gr.Markdown(INTRO)
    # an idle session's State is dropped (its delete callback removes the folder): clients without a heartbeat too
    c.session = gr.State(None, delete_callback=end_session, time_to_live=Budget.from_env().idle_seconds)
    c.maps = gr.State(None)  # the last token maps, so the layer slider needs no recomputation
    with gr.Tabs():
        with gr.Tab("1. Data"):
            _data_tab(c, samples)
        with gr.Tab("2. Train"):
            _train_tab(c)
        with gr.Tab("3. Compare"):
            _compare_tab(c)
        with gr.Tab("4. Token maps"):
            _token_tab(c, photos)
        with gr.Tab("5. Inside a layer"):
            _layer_tab(c, photos)
        with gr.Tab("6. Insights"):
            _insights_tab(c)
        with gr.Tab("7. Export"):
            _export_tab(c)
    return c


# ---------------------------------------------------------------- wiring

def _wire(demo: gr.Blocks, c: SimpleNamespace) -> None:
    data_outputs = [c.session, c.data_summary, c.gallery, c.counts, c.skipped, c.data_warnings, c.tm_val, c.il_val]
    data_inputs = [c.max_per_class, c.val_fraction]
    c.load_sample_btn.click(h.load_sample, [c.session, c.sample, *data_inputs], data_outputs, api_name="load_sample")
    c.zip_file.upload(h.load_zip, [c.session, c.zip_file, *data_inputs], data_outputs, api_name="load_zip")

    train_controls = [c.backbone, c.weights, c.img_size, c.lora_rank, c.epochs, c.batch_size, c.lr, c.pyra_lr,
                      c.schedule, c.seeds, c.num_levels, c.bench_repeats, c.protocol]
    buttons = [c.quick_btn, c.train_btn, c.stop_btn]
    result_outputs = [c.level, c.level_text, c.table, c.verdicts, c.hint, c.chart, c.tm_level, c.tm_layer,
                      c.il_level, c.il_layer, c.ins_run, c.ins_curve, c.ins_confusion, c.ins_per_class, c.ins_note,
                      c.ex_run, c.ex_tables]
    assert len(result_outputs) == h.RESULT_OUTPUTS

    def train_after(start: Any, public: bool) -> None:
        api = {"api_name": "train"} if public else {"api_visibility": "private"}
        job = start.then(h.train, [c.session, *train_controls], [c.session, c.status, c.losses],
                         concurrency_limit=TRAIN_CONCURRENCY, concurrency_id="train", show_progress="minimal", **api)
        job.then(h.buttons_idle, None, buttons, queue=False, api_visibility="private")
        # Gradio's front end runs .then() listeners only after a success: a refused request needs .failure() too
        job.failure(h.buttons_idle, None, buttons, queue=False, api_visibility="private")
        results_api = {"api_name": "results"} if public else {"api_visibility": "private"}
        job.success(h.show_results, [c.session], result_outputs, **results_api)

    train_after(c.train_btn.click(h.buttons_busy, None, buttons, queue=False, api_visibility="private"), public=True)
    quick = c.quick_btn.click(h.quick_demo_settings, [c.session],
                              [*data_outputs, c.sample, c.max_per_class, *train_controls],
                              api_name="quick_demo_settings")
    train_after(quick.success(h.buttons_busy, None, buttons, queue=False, api_visibility="private"), public=False)
    c.stop_btn.click(h.stop, [c.session], [c.status], api_name="stop", concurrency_limit=None, queue=False)

    level_outputs = [c.level_text, c.table, c.verdicts, c.hint, c.chart]
    c.level.change(h.select_level, [c.session, c.level], level_outputs, api_name="select_level",
                   show_progress="hidden", trigger_mode="always_last")

    for prefix in ("tm", "il"):
        image = getattr(c, f"{prefix}_image")
        getattr(c, f"{prefix}_val").input(h.pick_validation_image, [c.session, getattr(c, f"{prefix}_val")], image,
                                          api_visibility="private")
        getattr(c, f"{prefix}_photo").input(h.pick_example_photo, getattr(c, f"{prefix}_photo"), image,
                                            api_visibility="private")
    c.tm_btn.click(h.show_token_maps, [c.session, c.tm_image, c.tm_level, c.tm_layer],
                   [c.maps, c.tm_tome, c.tm_pyra, c.tm_layer, c.tm_tome_layer, c.tm_pyra_layer, c.tm_tokens],
                   api_name="token_maps", concurrency_limit=MODEL_CONCURRENCY, concurrency_id="model")
    c.tm_layer.change(h.show_layer_maps, [c.maps, c.tm_layer], [c.tm_tome_layer, c.tm_pyra_layer],
                      show_progress="hidden", api_visibility="private")
    inspect_inputs = [c.session, c.il_image, c.il_method, c.il_level, c.il_layer]
    inspect_outputs = [c.il_picture, c.il_histogram, c.il_pairs, c.il_text]
    c.il_btn.click(h.inspect, inspect_inputs, inspect_outputs, api_name="inspect_layer",
                   concurrency_limit=MODEL_CONCURRENCY, concurrency_id="model")
    c.il_layer.release(h.inspect, inspect_inputs, inspect_outputs, concurrency_id="model",
                       api_visibility="private")

    c.ins_run.input(h.insights, [c.session, c.ins_run], [c.ins_curve, c.ins_confusion, c.ins_per_class, c.ins_note],
                    api_visibility="private")
    c.tsne_btn.click(h.tsne, [c.session], [c.tsne_plot, c.tsne_note], api_name="tsne",
                     concurrency_id="model")
    c.ex_btn.click(h.export_run, [c.session, c.ex_run], [c.ex_zip, c.ex_code], api_name="export_run")
    demo.unload(h.end_of_session)


def build_demo() -> gr.Blocks:
    """The app, with nothing loaded yet (models load when a handler needs one)."""
    budget = Budget.from_env()
    sweep_idle_sessions(budget.idle_seconds)
    photos = list(example_photos())
    cache_sweep = int(min(600.0, budget.idle_seconds))  # Gradio's upload cache: swept this often, same idle limit
    with inputs.StudioBlocks(title=TITLE, delete_cache=(cache_sweep, int(budget.idle_seconds))) as demo:
        components = _layout(list_samples(), photos)
        _wire(demo, components)
    demo.queue(default_concurrency_limit=4)
    return demo


def launch_kwargs() -> dict[str, Any]:
    """launch() arguments: host/port from GRADIO_SERVER_NAME/PORT (Gradio's defaults: 127.0.0.1:7860)."""
    budget = Budget.from_env()  # a bad PYRA_* limit stops the launch with its message, not a request later
    return {"allowed_paths": [str(work_root())], "css": CSS, "show_error": False,
            "max_file_size": budget.max_upload_bytes}
