"""7. Export: one run's adapter as a zip with the Python that loads it, the run as an ONNX file for
deployment, and the comparison's tables."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Optional

import gradio as gr

from pyra.files import size_text
from pyra.run.comparison import COMPARE_CSV, COMPARE_JSON
from pyra.run.onnx_export import export_run as export_onnx_file
from pyra_app import inputs, views
from pyra_app.budget import Budget, BudgetError, folder_bytes
from pyra_app.context import first_run, has_result, require_result
from pyra_app.messages import UserError, friendly_errors
from pyra_app.session import Session, work_root
from pyra_app.tab_train import TRAIN_CONCURRENCY

ADAPTER_NOTE = ("**Adapter zip** for Python: the run's LoRA, PYRA and head weights (a few MB) with its config; "
                "the code below loads it onto the backbone with the `pyra` package.")
ONNX_NOTE = ("**ONNX file** for deployment without PyTorch or this app: LoRA folded into the weights, "
             "merging fixed at the chosen level, batch 1. Its metadata says how to feed it (`pyra.img_size`, "
             "`pyra.mean`, `pyra.std`, `pyra.classes`). Building it takes about half a minute and waits for "
             "the training slot; the file is checked in onnxruntime against the model before it is offered, and "
             "timed against it on this server.")


def build(c: SimpleNamespace) -> None:
    c.ex_run = inputs.Dropdown([], label="Run to export (for both files below)", value=None)
    with gr.Row():
        with gr.Column():
            gr.Markdown(ADAPTER_NOTE)
            c.ex_btn = gr.Button("Build adapter zip", variant="primary")
            c.ex_zip = gr.File(label="Adapter: config.json + adapter.safetensors + metrics.json", interactive=False,
                               elem_id="ex-zip")
        with gr.Column():
            gr.Markdown(ONNX_NOTE)
            c.ex_level = inputs.Dropdown([], label="Compression level of the ONNX file", value=None)
            c.ex_onnx_btn = gr.Button("Build ONNX file")
            c.ex_onnx = gr.File(label="ONNX model (.onnx)", interactive=False, elem_id="ex-onnx")
            c.ex_onnx_text = gr.Markdown()
    c.ex_tables = gr.File(label="Comparison: compare.csv and compare.json", interactive=False,
                          file_count="multiple")
    c.ex_code = gr.Code(views.python_snippet("pyra@0", "pyra-pyra-seed0.zip"), language="python",
                        label="Load the adapter zip in Python", interactive=False)


def wire(c: SimpleNamespace, trained: list) -> None:
    c.ex_btn.click(export_run, [c.session, c.ex_run], [c.ex_zip, c.ex_code], api_name="export_run")
    c.ex_onnx_btn.click(export_onnx, [c.session, c.ex_run, c.ex_level], [c.ex_onnx, c.ex_onnx_text],
                        api_name="export_onnx", concurrency_limit=TRAIN_CONCURRENCY, concurrency_id="train")
    for job in trained:
        job.success(refresh, [c.session], [c.ex_run, c.ex_level, c.ex_tables], api_visibility="private")


@friendly_errors
def refresh(session: Optional[Session]) -> tuple:
    """The session's runs and levels to choose from, and its comparison's compare.csv + compare.json."""
    if not has_result(session):
        return gr.skip(), gr.skip(), gr.skip()
    result = session.result
    files = [str(Path(result.out_dir) / name) for name in (COMPARE_CSV, COMPARE_JSON)]
    levels = views.level_choices(result.levels)
    return (gr.Dropdown(choices=views.run_choices(result.run_dirs), value=first_run(session)),
            gr.Dropdown(choices=levels, value=levels[-1][1] if levels else None),
            [f for f in files if Path(f).is_file()] or None)


@friendly_errors
def export_run(session: Optional[Session], run_key: Optional[str]) -> tuple:
    """Zip one run's adapter (config.json + adapter.safetensors + metrics.json) for download."""
    result = require_result(session)
    if not isinstance(run_key, str) or run_key not in result.run_dirs:
        raise UserError("Choose a run to export.")
    name = f"{_file_stem(run_key)}.zip"
    path = views.export_run_zip(Path(result.run_dirs[run_key]), session.workdir / "exports" / name)
    return str(path), views.python_snippet(run_key, name)


@friendly_errors
def export_onnx(session: Optional[Session], run_key: Optional[str], level: Optional[int]) -> tuple:
    """One run as an ONNX file at one of the comparison's levels (batch 1), checked in onnxruntime."""
    result = require_result(session)
    if not isinstance(run_key, str) or run_key not in result.run_dirs:
        raise UserError("Choose a run to export.")
    if not isinstance(level, int) or not 0 <= level < len(result.levels):
        raise UserError("Choose the compression level of the ONNX file.")
    budget = Budget.from_env()
    budget.check_disk(session.workdir, work_root())
    name = f"{_file_stem(run_key)}-level{level + 1}.onnx"
    path = session.workdir / "exports" / name
    path.parent.mkdir(exist_ok=True)
    info = export_onnx_file(result.run_dirs[run_key], path, schedule=list(result.levels[level].schedule))
    if folder_bytes(session.workdir) > budget.session_disk_bytes:
        path.unlink(missing_ok=True)
        raise BudgetError(f"the ONNX file ({size_text(info.bytes)}) does not fit this session's disk budget of "
                          f"{size_text(budget.session_disk_bytes)}: reload the page to start a new session "
                          "(or raise PYRA_SESSION_DISK_MB)")
    return str(path), views.onnx_summary(info)


def _file_stem(run_key: str) -> str:
    """A download's name for a run: "pyra@0" -> "pyra-pyra-seed0", "tome@2:L1" -> "pyra-tome-seed2-L1"."""
    return f"pyra-{run_key.replace('@', '-seed').replace(':', '-')}"
