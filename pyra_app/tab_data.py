"""1. Data: load a built-in sample or a zip of class folders into the session, and preview it."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any, Optional

import gradio as gr
import pandas as pd

from pyra.data.datasets import load_dataset
from pyra_app import inputs, views
from pyra_app.budget import Budget
from pyra_app.context import require_idle, session_for
from pyra_app.messages import UserError, friendly_errors
from pyra_app.session import Session, work_root
from pyra_app.settings import data_settings
from pyra_app.uploads import discard_upload

COUNT_HEADERS = ["class", "train images", "validation images"]
SKIPPED_HEADERS = ["file", "reason"]
NO_DATA = ("No dataset loaded yet: choose a built-in sample and press **Load sample**, or upload a zip. Until you "
           "train your own, the other tabs show the worked example shipped with the app.")


def build(c: SimpleNamespace, samples: list) -> None:
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
            c.data_summary = gr.Markdown(NO_DATA, elem_id="data-summary")
            c.data_warnings = gr.Markdown()
            c.gallery = gr.Gallery(label="Preview: a few images per class", columns=6, height="auto",
                                   object_fit="contain", allow_preview=False)
            with gr.Row():
                c.counts = gr.Dataframe(headers=COUNT_HEADERS, label="Images per class", interactive=False,
                                        max_height=260)
                c.skipped = gr.Dataframe(headers=SKIPPED_HEADERS, label="Skipped files", interactive=False,
                                         max_height=260, wrap=True)


def outputs(c: SimpleNamespace) -> list:
    """What loading data updates (the session first)."""
    return [c.session, c.data_summary, c.gallery, c.counts, c.skipped, c.data_warnings]


def wire(c: SimpleNamespace) -> list:
    """The data-loading events (other tabs refresh themselves after them)."""
    settings = [c.max_per_class, c.val_fraction]
    return [
        c.load_sample_btn.click(load_sample, [c.session, c.sample, *settings], outputs(c), api_name="load_sample"),
        c.zip_file.upload(load_zip, [c.session, c.zip_file, *settings], outputs(c), api_name="load_zip"),
    ]


def shown(session: Session) -> tuple:
    """The session's dataset as `outputs` shows it."""
    preview = views.data_preview(session.data)
    counts = pd.DataFrame(preview.counts, columns=COUNT_HEADERS)
    skipped = pd.DataFrame(preview.skipped, columns=SKIPPED_HEADERS)
    return session, preview.summary, preview.gallery, counts, skipped, preview.warnings


def _load(session: Optional[Session], source: str | Path, max_per_class: Any, val_fraction: Any,
          request: Optional[gr.Request]) -> tuple:
    session = session_for(session, request)
    require_idle(session)
    cap, fraction = data_settings(max_per_class, val_fraction)
    session.data = None  # the old dataset's files go now; a refused upload leaves no dataset behind
    folder = session.data_dir()
    budget = Budget.from_env()
    budget.check_disk(session.workdir, work_root())
    session.data = load_dataset(source, folder, val_fraction=fraction, max_per_class=cap,
                                budget=budget.write_budget(session.workdir, work_root()))
    return shown(session)


@friendly_errors
def load_sample(session: Optional[Session], sample: str, max_per_class: Any, val_fraction: float,
                request: gr.Request) -> tuple:
    """Load a built-in sample ("sample:NAME") into the session."""
    if not sample or not isinstance(sample, str):
        raise UserError("Choose a sample first.")
    return _load(session, f"sample:{sample}", max_per_class, val_fraction, request)


@friendly_errors
def load_zip(session: Optional[Session], zip_path: Optional[str], max_per_class: Any, val_fraction: float,
             request: gr.Request) -> tuple:
    """Load an uploaded zip (one folder of images per class) into the session."""
    if not zip_path or not isinstance(zip_path, str):
        raise UserError("Upload a .zip file with one folder of images per class.")
    try:
        return _load(session, Path(zip_path), max_per_class, val_fraction, request)
    finally:  # extracted or refused: the upload itself is not needed any more
        discard_upload(zip_path)
