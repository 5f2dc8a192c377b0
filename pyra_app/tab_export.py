"""7. Export: one run's adapter as a zip with the Python that loads it, and the comparison's tables."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Optional

import gradio as gr

from pyra.run.comparison import COMPARE_CSV, COMPARE_JSON
from pyra_app import inputs, views
from pyra_app.context import first_run, has_result, require_result
from pyra_app.messages import UserError, friendly_errors
from pyra_app.session import Session


def build(c: SimpleNamespace) -> None:
    with gr.Row():
        with gr.Column():
            c.ex_run = inputs.Dropdown([], label="Run to export", value=None)
            c.ex_btn = gr.Button("Build adapter zip", variant="primary")
            c.ex_zip = gr.File(label="Adapter: config.json + adapter.safetensors + metrics.json", interactive=False,
                               elem_id="ex-zip")
        with gr.Column():
            c.ex_tables = gr.File(label="Comparison: compare.csv and compare.json", interactive=False,
                                  file_count="multiple")
    c.ex_code = gr.Code(views.python_snippet("pyra@0", "pyra-pyra-seed0.zip"), language="python",
                        label="Load it in Python", interactive=False)


def wire(c: SimpleNamespace, trained: list) -> None:
    c.ex_btn.click(export_run, [c.session, c.ex_run], [c.ex_zip, c.ex_code], api_name="export_run")
    for job in trained:
        job.success(refresh, [c.session], [c.ex_run, c.ex_tables], api_visibility="private")


@friendly_errors
def refresh(session: Optional[Session]) -> tuple:
    """The session's runs to choose from, and its comparison's compare.csv + compare.json."""
    if not has_result(session):
        return gr.skip(), gr.skip()
    result = session.result
    files = [str(Path(result.out_dir) / name) for name in (COMPARE_CSV, COMPARE_JSON)]
    return (gr.Dropdown(choices=views.run_choices(result.run_dirs), value=first_run(session)),
            [f for f in files if Path(f).is_file()] or None)


@friendly_errors
def export_run(session: Optional[Session], run_key: Optional[str]) -> tuple:
    """Zip one run's adapter (config.json + adapter.safetensors + metrics.json) for download."""
    result = require_result(session)
    if not isinstance(run_key, str) or run_key not in result.run_dirs:
        raise UserError("Choose a run to export.")
    name = f"pyra-{run_key.replace('@', '-seed').replace(':', '-')}.zip"
    path = views.export_run_zip(Path(result.run_dirs[run_key]), session.workdir / "exports" / name)
    return str(path), views.python_snippet(run_key, name)
