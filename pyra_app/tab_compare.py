"""3. Compare: the compression slider, and at each level every model's accuracy, speed and FLOPs, the
paired verdicts and the accuracy-vs-throughput chart."""
from __future__ import annotations

from types import SimpleNamespace
from typing import Any, Optional

import gradio as gr
import pandas as pd

from pyra.report.plots import accuracy_vs_throughput
from pyra_app import example, inputs, views
from pyra_app.context import has_result, level_index, level_slider, require_result
from pyra_app.messages import friendly_errors
from pyra_app.session import Session
from pyra_app.settings import MAX_LEVELS

MAX_LEVEL = MAX_LEVELS - 1
"""Before training, level sliders span every level a comparison can have, so API calls made without
/results first are not refused by Gradio's bounds check; a comparison narrows them."""


def build(c: SimpleNamespace) -> None:
    c.level = inputs.Slider(0, MAX_LEVEL, value=0, step=1, interactive=False,
                            label="Compression level (available after training)", elem_id="level-slider")
    c.level_text = gr.Markdown(elem_id="level-text")
    c.table = gr.Dataframe(headers=views.COMPARE_HEADERS, label="At this level", interactive=False, wrap=True,
                           elem_id="compare-table")
    gr.Markdown(views.TABLE_NOTE)
    c.verdicts = gr.Markdown(elem_id="verdicts")
    c.hint = gr.Markdown()
    c.chart = gr.Plot(label="Accuracy vs throughput (the current level is enlarged)", elem_id="compare-chart")
    c.compare_seen = gr.State(False)  # the visitor has opened this tab


def _level_outputs(c: SimpleNamespace) -> list:
    return [c.level_text, c.table, c.verdicts, c.hint, c.chart]


def wire(c: SimpleNamespace, trained: list) -> None:
    c.level.change(select_level, [c.session, c.level], _level_outputs(c), api_name="select_level",
                   show_progress="hidden", trigger_mode="always_last")
    # the example's speed is measured once the tab has been opened and the session holds the example, in
    # whichever order those two happen (a visitor may open the tab before the page's arrival event is done)
    measure = dict(fn=measure_example_speed, inputs=[c.session, c.compare_seen],
                   outputs=[c.session, c.level, *_level_outputs(c)], concurrency_limit=1, concurrency_id="speed",
                   api_visibility="private", show_progress="minimal")
    c.compare_tab.select(lambda: True, None, c.compare_seen, queue=False, api_visibility="private").then(**measure)
    for index, job in enumerate(trained):
        api = {"api_name": "results"} if index == 0 else {"api_visibility": "private"}
        job.success(refresh, [c.session], [c.level, *_level_outputs(c)], **api).then(**measure)


@friendly_errors
def select_level(session: Optional[Session], level: Any) -> tuple:
    """Everything the Compare tab shows at one level, from the cached result (no recomputation)."""
    result = require_result(session)
    index = level_index(result, level)
    rows = result.rows_at(index)
    table = pd.DataFrame(views.compare_table(rows), columns=views.COMPARE_HEADERS)
    chart = accuracy_vs_throughput(views.chart_rows(result.rows), highlight=views.highlight_point(rows))
    description = (views.level_description(result.levels[index], rows, len(result.levels)) + "\n\n"
                   + views.training_note(result.protocol, result.training))
    if example.is_example(result):
        description = views.example_note(example.speed_measured_here(result)) + "\n\n" + description
    return (description, table,
            views.verdict_markdown(result.comparisons.get(index, [])), views.sample_size_hint(rows), chart)


@friendly_errors
def measure_example_speed(session: Optional[Session], tab_opened: bool) -> tuple:
    """The first time a session looks at the shipped example, measure its speed on this server (one
    measurement at a time on the server, so visitors' measurements do not slow each other down)."""
    if (not tab_opened or session is None or not example.is_example(session.result)
            or example.speed_measured_here(session.result)):
        return tuple(gr.skip() for _ in range(7))
    session.result = example.with_speed_measured_here(session.result)
    return (session, *refresh(session))


@friendly_errors
def refresh(session: Optional[Session]) -> tuple:
    """The slider at the session's trained target and everything shown there (unchanged without a result)."""
    if not has_result(session):
        return tuple(gr.skip() for _ in range(6))
    return (level_slider(session.result), *select_level(session, len(session.result.levels) - 1))
