"""Several sessions at once, and Stop pressed again and again, through the app's HTTP API.

The scenarios are those of benchmarks/session_load.py, which also measures memory, disk and
time; here only their invariants are checked. One `python app.py` serves the whole module.
"""
from __future__ import annotations

from collections.abc import Iterator

import pytest

from benchmarks import session_load as load

STOPS = 10


@pytest.fixture(scope="module")
def app(tmp_path_factory) -> Iterator[load.App]:
    with load.serve_app(tmp_path_factory.mktemp("load"), threads=1, heartbeat_s=1.0) as app:  # quick unloads
        yield app


def test_four_sessions_at_once_get_their_own_results_and_leave_no_folder(app, tmp_path):
    """Two trainers and two viewers, each with its own class names: each gets back only its own
    classes (data tab and exported run), every training completes, the viewers' token maps and
    layer view come back, and closing a client removes its session folder."""
    outcomes = load.run_sessions(app, load.SESSIONS, tmp_path)

    assert load.session_failures(outcomes) == []
    assert len({tuple(o.classes) for o in outcomes}) == len(outcomes) == 4
    for outcome in outcomes:
        assert outcome.classes_seen == {"data tab": sorted(outcome.classes), "exported run": sorted(outcome.classes)}
    assert not list(app.work_root.glob("session-*"))


def test_stop_pressed_ten_times_in_a_row_ends_each_run_within_a_step(app, tmp_path):
    """Each Stop ends its training after at most the step that was running (status line and
    metrics.json agree), a training started afterwards completes, and the session folder goes."""
    session = load.stop_trainings(app, STOPS, tmp_path)

    assert load.stop_failures(session) == []
    assert len(session.stops) == STOPS
    for stop in session.stops:
        assert stop.status.startswith("**Stopped**") and stop.step_seen >= 1
        assert stop.step_seen <= stop.step_ended <= stop.step_seen + 1
        assert stop.steps_on_disk == stop.step_ended
    assert session.final_status.startswith("**Done**") and session.folder_removed_s is not None
