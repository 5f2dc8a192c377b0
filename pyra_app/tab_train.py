"""2. Train: the training settings, Train and compare / Quick demo / Stop, live progress and loss."""
from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Optional

import gradio as gr

from pyra.run.plan import plan_compare, within_memory
from pyra_app import example, inputs, settings, tab_data, views
from pyra_app.budget import Budget
from pyra_app.context import require_data, require_idle, session_for
from pyra_app.jobs import STARTING, follow_job, start_job
from pyra_app.messages import error_message, friendly_errors, public_text
from pyra_app.session import Session, work_root
from pyra_app.settings import TRAIN_FIELDS, TrainSettings

BACKBONES = ["default", "vit_tiny_patch16_224", "vit_small_patch16_224", "deit_small_patch16_224",
             "vit_base_patch16_224", "random:vit_tiny_patch16_224"]
WEIGHT_TYPES = [".safetensors", ".pth", ".pt", ".bin"]
TRAIN_CONCURRENCY = int(os.environ.get("PYRA_TRAIN_CONCURRENCY", "1"))  # training jobs at once, all sessions
EXPLANATION = (
    "Trains three models on the loaded data: LoRA uncompressed, ToMe + LoRA and PYRA + LoRA. The two merging "
    "models are trained **elastically**: every step trains uncompressed, at the target and at a random level "
    "between them, so one model is trained for every position of the Compare "
    "tab's slider. Each model's head starts from a logistic regression on the backbone's features. Then accuracy "
    "and speed are measured at every level. **Quick demo**: Fashion-MNIST sample (100 training and 300 validation "
    "images), default backbone, 2 epochs: about 3 minutes on 2 CPU cores.")

# The quick demo: the built-in Fashion-MNIST sample (10 train + 30 validation images per class), the shipped
# DINOv2 ViT-S/14 at its CPU default of 112 px, the default recipe (head start, elastic sandwich training on the labels, no
# dropout) for QUICK_DEMO_TRAIN.epochs epochs, three levels. Its time on 2 CPU cores is in docs/RESULTS.md. Its
# 26 optimiser steps (batch 8: the same work as batch 16 in the server's passes of 8, twice the steps) want a lower
# learning rate and a less regularised head start than the recipe's (chosen on other splits of the same data by
# benchmarks/quick_demo_recipe.py). Each model is validated once, after its last epoch, to save time.
QUICK_DEMO_DATA = {"sample": "fashion", "max_per_class": 40, "val_fraction": 0.75}
QUICK_DEMO_TRAIN = TrainSettings(epochs=2, batch_size=8, lr=1e-3, num_levels=3, bench_repeats=3,
                                 validate_every_epoch=False, head_start_c=0.2)
TAB_ID = "train"


def build(c: SimpleNamespace) -> None:
    defaults = TrainSettings()
    with gr.Row():
        with gr.Column(scale=1):
            c.backbone = inputs.Dropdown(BACKBONES, value=defaults.backbone, allow_custom_value=True,
                                         label="Backbone", elem_id="backbone",
                                         info="'default': DINOv2 ViT-S/14 shipped offline. Or type any timm ViT name "
                                              "(weights from the hub, or the file below); 'random:NAME' = random init.")
            c.weights = gr.File(label="Local weights for that architecture (optional)", file_types=WEIGHT_TYPES,
                                type="filepath", height=150)
            with gr.Row():
                c.img_size = inputs.Number(0, precision=0, minimum=0, label="Image size, px (0 = automatic)",
                                           elem_id="img-size")
                c.lora_rank = inputs.Slider(1, settings.MAX_LORA_RANK, value=defaults.lora_rank, step=1,
                                            label="LoRA rank")
            c.schedule = inputs.Dropdown(["low", "high"], value=defaults.schedule, allow_custom_value=True,
                                         label="Target compression",
                                         info="low / high (the paper's), a FLOPs ratio like 2.5, r per layer like 4, "
                                              "or a list 8,6,4,...")
            with gr.Row():
                c.epochs = inputs.Slider(1, settings.MAX_EPOCHS, value=defaults.epochs, step=1, label="Epochs",
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
                c.seeds = gr.Textbox(", ".join(map(str, defaults.seeds)), label="Seeds",
                                     info="e.g. 0, 1, 2: one training per seed and method; "
                                          "intervals over seeds need at least 2")
                c.num_levels = inputs.Slider(2, settings.MAX_LEVELS, value=defaults.num_levels, step=1,
                                             label="Compression levels to measure", elem_id="num-levels")
                c.bench_repeats = inputs.Slider(1, settings.MAX_BENCH_REPEATS, value=defaults.bench_repeats, step=1,
                                                label="Speed measurement repeats", elem_id="bench-repeats")
                c.validate_every_epoch = inputs.Checkbox(defaults.validate_every_epoch,
                                                         label="Validate after every epoch",
                                                         elem_id="validate-every-epoch",
                                                         info="Off: each model is validated once, after its last "
                                                              "epoch: faster, and the same comparison.")
                c.head_start_c = inputs.Number(defaults.head_start_c, minimum=0, label="Head start C",
                                               elem_id="head-start-c",
                                               info="The head's logistic regression before fine-tuning: inverse "
                                                    "L2 strength (smaller = a simpler head). The frozen-feature "
                                                    "probe uses 1.")
        with gr.Column(scale=2):
            gr.Markdown(EXPLANATION)
            with gr.Row():
                c.quick_btn = gr.Button("Quick demo", variant="secondary")
                c.train_btn = gr.Button("Train and compare", variant="primary", elem_id="train-btn")
                c.stop_btn = gr.Button("Stop", variant="stop", interactive=False, elem_id="stop-btn")
            c.status = gr.Markdown("Load data, then press **Train and compare**.", elem_classes="pyra-status",
                                   elem_id="train-status")
            c.losses = gr.Plot(label="Training loss", elem_id="loss-chart")


def controls(c: SimpleNamespace) -> list:
    """The settings controls, in `TRAIN_FIELDS` order."""
    return [getattr(c, name) for name in TRAIN_FIELDS]


def wire(c: SimpleNamespace, demo: gr.Blocks) -> tuple[list, list]:
    """(the events after which the session has a new comparison, public first: trainings and the worked
    example on arrival; the Quick demo's data loads)."""
    buttons = [c.quick_btn, c.train_btn, c.stop_btn]

    def job_after(start: Any, public: bool) -> Any:
        api = {"api_name": "train"} if public else {"api_visibility": "private"}
        job = start.then(train, [c.session, *controls(c)], [c.session, c.status, c.losses],
                         concurrency_limit=TRAIN_CONCURRENCY, concurrency_id="train", show_progress="minimal", **api)
        job.then(buttons_idle, None, buttons, queue=False, api_visibility="private")
        # Gradio's front end runs .then() listeners only after a success: a refused request needs .failure() too
        job.failure(buttons_idle, None, buttons, queue=False, api_visibility="private")
        return job

    trained = [job_after(c.train_btn.click(buttons_busy, None, buttons, queue=False, api_visibility="private"), True)]
    loads = []
    for index, button in enumerate((c.quick_btn, c.quick_top_btn)):
        api = {"api_name": "quick_demo_settings"} if index == 0 else {"api_visibility": "private"}
        quick = button.click(quick_demo_settings, [c.session],
                             [*tab_data.outputs(c), c.sample, c.max_per_class, *controls(c), c.tabs], **api)
        trained.append(job_after(quick.success(buttons_busy, None, buttons, queue=False, api_visibility="private"),
                                 False))
        loads.append(quick)
    c.stop_btn.click(stop, [c.session], [c.status], api_name="stop", concurrency_limit=None, queue=False)
    arrival = demo.load(open_worked_example, [c.session], [c.session], api_visibility="private")
    return [*trained, arrival], loads


def train(request: gr.Request, session: Optional[Session], *values: Any) -> Iterator[tuple]:
    """Train uncompressed / ToMe / PYRA and sweep the levels (`values`: the controls in `TRAIN_FIELDS` order);
    yields (session, status, loss chart). Refused before anything starts if a setting or a limit says no."""
    session = session_for(session, request)
    budget = Budget.from_env()
    try:
        require_idle(session)
        data = require_data(session)
        chosen = settings.train_settings(dict(zip(TRAIN_FIELDS, values)), budget)
        if chosen.weights:
            budget.check_weights(Path(chosen.weights))
        config = within_memory(data, settings.compare_config(chosen), budget.max_train_memory_bytes)
        budget.check_plan(plan_compare(data, config))
        budget.check_disk(session.workdir, work_root())
    except Exception as error:
        raise gr.Error(error_message(error, "preparing the comparison"), print_exception=False) from None

    note = views.micro_batch_note(config.train)
    yield session, STARTING + note, None
    end = yield from follow_job(session, start_job(session, config, session.new_run_dir(), budget))
    chart = views.loss_figure(end.losses) if end.losses else None
    if end.error is not None:  # in the status line and as a pop-up
        message = error_message(end.error, "the comparison")
        yield session, f"**Training failed**: {message}", chart
        raise gr.Error(message, print_exception=False)
    result = end.result
    if result.status == "completed":
        session.result = result
    elif result.status != "cancelled":
        gr.Warning(public_text(f"Training {result.status}: {result.message}"))
    yield session, f"**Stopped**: {end.limit}." if end.limit else views.result_status(result, end.seconds) + note, chart


@friendly_errors
def stop(session: Optional[Session]) -> str:
    """Ask the running job to stop after its current step."""
    if session is None or not session.busy:
        return "Nothing is running."
    session.cancel.set()
    return "**Stopping** after the current step..."


@friendly_errors
def quick_demo_settings(session: Optional[Session], request: gr.Request) -> tuple:
    """Load the quick demo's data, fill the Train controls with its settings and show the Train tab."""
    data = tab_data.load_sample(session, QUICK_DEMO_DATA["sample"], QUICK_DEMO_DATA["max_per_class"],
                                QUICK_DEMO_DATA["val_fraction"], request)
    return (*data, QUICK_DEMO_DATA["sample"], QUICK_DEMO_DATA["max_per_class"],
            *settings.control_values(QUICK_DEMO_TRAIN), gr.Tabs(selected=TAB_ID))


@friendly_errors
def open_worked_example(session: Optional[Session], request: gr.Request) -> Any:
    """A new page: the session starts on the shipped worked example (no data is loaded: that stays the
    visitor's choice)."""
    shipped = example.shipped_example()
    if shipped is None or (session is not None and session.result is not None):
        return gr.skip()  # not shipped (a checkout without assets/example), or this session has its own
    session = session_for(session, request)
    session.result = shipped
    return session


def buttons_busy() -> tuple:
    return gr.Button(interactive=False), gr.Button(interactive=False), gr.Button(interactive=True)


def buttons_idle() -> tuple:
    return gr.Button(interactive=True), gr.Button(interactive=True), gr.Button(interactive=False)
