"""Several browser sessions at once, then Stop pressed during many trainings in a row, through the app's API.

    python benchmarks/session_load.py                          # 4 sessions, 10 stops; writes the docs
    python benchmarks/session_load.py --quick --out /tmp/load  # 2 sessions, 3 stops, under 3 minutes

Starts `python app.py` on a free local port with its own PYRA_WORK_ROOT and GRADIO_TEMP_DIR and
drives it with gradio_client, one client per session, each in its own thread. Trainer sessions
upload a zip of their own classes, train a tiny comparison and export a run; viewer sessions do
the same, then draw token maps and inspect a layer of their own run. Every class set is unique,
so a session that received another's results would show foreign classes. A session ends when
its client closes: Gradio's unload event then removes the session folder. Afterwards one session
presses Stop during each of several long trainings, and a last tiny training must complete.

The server's memory (VmRSS of the process and its children) is sampled every 0.2 s, the disk use
of its two folders every second. Writes OUT/session_load.json and the figures: into
docs/RELIABILITY.md between the session_load markers by default, to OUT/session_load.md with
--out. Exits 1 if an invariant fails.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import tempfile
import threading
import time
import zipfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Optional

from benchmarks.app_server import TINY_SETTINGS, TINY_TRAIN, App, serve_app
from benchmarks.zips import colour_zip
from pyra.files import size_text
from pyra.report.tables import machine_info, markdown_table, write_section
from pyra_app.budget import folder_bytes
from pyra_app.session import session_dir_name
from pyra_app.settings import control_values

REPO = Path(__file__).resolve().parents[1]

# 50 epochs of 3 steps of 32 images at 144 px. A step (over a second on 2 shared cores, one thread)
# must last longer than the status line's update interval (0.5 s): the step shown when Stop is
# pressed is then the last finished one, and "one more step at most" can be checked from outside
LONG_TRAIN = control_values(replace(TINY_SETTINGS, img_size=144, epochs=50, batch_size=32))
SESSIONS = (  # name, role, classes: every class set differs, so cross-talk shows as foreign class names
    ("trainer-1", "trainer", ("red", "green", "blue")),
    ("viewer-1", "viewer", ("north", "south", "east", "west")),
    ("trainer-2", "trainer", ("circle", "square")),
    ("viewer-2", "viewer", ("cat", "dog")),
)
STOP_CLASSES = ("left", "right", "middle")
MEMORY_TOLERANCE = 0.25  # share of the warm baseline RSS that memory may keep (see the --help epilog)
UNLOAD_TIMEOUT_S = 60.0  # a closed session's folder must be gone by then
SAMPLE_EVERY_S = 0.2
STOPPED = re.compile(r"cancelled by the user after (\d+) of (\d+) steps")
STEP = re.compile(r"step (\d+)/(\d+)")


# ---------------------------------------------------------------- what the sessions measure

def process_tree_rss(pid: int) -> int:
    """Resident memory of `pid` and all its descendants, in bytes (0 once it is gone)."""
    total, pending = 0, [pid]
    while pending:
        current = pending.pop()
        try:
            status = Path(f"/proc/{current}/status").read_text()
            total += int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1)) * 1024
            for task in Path(f"/proc/{current}/task").iterdir():
                pending += [int(child) for child in (task / "children").read_text().split()]
        except (OSError, AttributeError):  # the process ended meanwhile
            continue
    return total


class Probe(threading.Thread):
    """Samples the server's RSS every 0.2 s and the size of its folders every second."""

    def __init__(self, app: App):
        super().__init__(name="probe", daemon=True)
        self.app = app
        self.rss: list[tuple[float, int]] = []
        self.disk: list[tuple[float, int, int]] = []  # time, work root bytes, Gradio temp bytes
        self.done = threading.Event()

    def run(self) -> None:
        next_disk = 0.0
        while not self.done.is_set():
            now = time.monotonic()
            self.rss.append((now, process_tree_rss(self.app.pid)))
            if now >= next_disk:
                self.disk.append((now, folder_bytes(self.app.work_root), folder_bytes(self.app.gradio_temp)))
                next_disk = now + 1.0
            self.done.wait(SAMPLE_EVERY_S)

    def peak_rss(self, start: float, end: float) -> int:
        return max(rss for t, rss in self.rss if start <= t <= end)

    def settled_rss(self, seconds: float = 3.0) -> int:
        """Median RSS over the next `seconds` (allocators return memory with some delay)."""
        start = time.monotonic()
        time.sleep(seconds)
        return int(statistics.median(rss for t, rss in self.rss if t >= start))

    def peak_disk(self, start: float, end: float) -> tuple[int, int]:
        window = [(work, temp) for t, work, temp in self.disk if start <= t <= end] or [(0, 0)]
        return max(work for work, _ in window), max(temp for _, temp in window)


# ---------------------------------------------------------------- sessions

@dataclass
class SessionOutcome:
    name: str
    role: str
    classes: list[str]  # the classes this session uploaded
    classes_seen: dict[str, list[str]] = field(default_factory=dict)  # where -> the classes shown there
    status: str = ""  # final training status line
    views: list[str] = field(default_factory=list)  # token-map and layer views that came back complete
    seconds: float = 0.0  # from the first request to the last answer
    folder: str = ""  # the session's folder under the work root
    folder_existed: bool = False  # before closing
    folder_removed_s: Optional[float] = None  # from closing the client to its folder's removal
    error: str = ""


def run_session(app: App, name: str, role: str, classes: tuple[str, ...], folder: Path) -> SessionOutcome:
    """One browser session: upload, train tiny, export (and for a viewer: token maps, a layer); then close."""
    from gradio_client import Client, handle_file

    outcome = SessionOutcome(name, role, list(classes))
    zip_path, image = colour_zip(folder / name, classes)
    client = Client(app.url, verbose=False)
    outcome.folder = session_dir_name(client.session_hash)
    start = time.monotonic()
    try:
        _, _, counts, *_ = client.predict(handle_file(str(zip_path)), 0, 0.25, api_name="/load_zip")
        outcome.classes_seen["data tab"] = sorted(row[0] for row in counts["data"])
        outcome.status, _ = client.predict(*TINY_TRAIN, api_name="/train")
        client.predict(api_name="/results")
        exported, _ = client.predict("pyra@0", api_name="/export_run")
        with zipfile.ZipFile(exported) as archive:
            outcome.classes_seen["exported run"] = sorted(json.loads(archive.read("config.json"))["classes"])
        if role == "viewer":
            tome, pyra, _, _, _, tokens = client.predict(handle_file(str(image)), 1, 1, api_name="/token_maps")
            if Path(tome).is_file() and Path(pyra).is_file() and tokens["data"]:
                outcome.views.append("token maps")
            picture, _, _, text = client.predict(handle_file(str(image)), "PYRA + LoRA", 1, 1,
                                                 api_name="/inspect_layer")
            if Path(picture).is_file() and "Layer 1" in text:
                outcome.views.append("layer 1")
    except Exception as error:  # recorded: the run goes on and the report names it
        outcome.error = f"{type(error).__name__}: {error}"
    outcome.seconds = time.monotonic() - start
    outcome.folder_existed = (app.work_root / outcome.folder).is_dir()
    outcome.folder_removed_s = close_session(client, app.work_root / outcome.folder)
    return outcome


def close_session(client: Any, session_folder: Path) -> Optional[float]:
    """Close the client (as a browser tab closing); seconds until the session folder is gone, or None."""
    closed = time.monotonic()
    client.close()
    while time.monotonic() - closed < UNLOAD_TIMEOUT_S:
        if not session_folder.exists():
            return time.monotonic() - closed
        time.sleep(0.1)
    return None


def run_sessions(app: App, sessions: tuple, folder: Path) -> list[SessionOutcome]:
    """All `sessions` (name, role, classes) at once, one thread each."""
    with ThreadPoolExecutor(max_workers=len(sessions)) as pool:
        futures = [pool.submit(run_session, app, name, role, classes, folder) for name, role, classes in sessions]
        return [future.result() for future in futures]


def session_failures(outcomes: list[SessionOutcome]) -> list[str]:
    """Broken invariants: a failed request, a training not done, foreign classes, a view missing, a folder kept."""
    failures = []
    for o in outcomes:
        if o.error:
            failures.append(f"{o.name}: {o.error}")
        if not o.status.startswith("**Done**"):
            failures.append(f"{o.name}: training did not complete: {o.status!r}")
        for where, seen in o.classes_seen.items():
            if seen != sorted(o.classes):
                failures.append(f"{o.name}: the {where} shows classes {seen}, this session uploaded {o.classes}")
        if o.role == "viewer" and o.views != ["token maps", "layer 1"]:
            failures.append(f"{o.name}: views returned incomplete: {o.views}")
        if not o.folder_existed:
            failures.append(f"{o.name}: its folder {o.folder} did not exist while the session was open")
        if o.folder_removed_s is None:
            failures.append(f"{o.name}: its folder {o.folder} was still there {UNLOAD_TIMEOUT_S:.0f} s after closing")
    if len({o.folder for o in outcomes}) != len(outcomes):
        failures.append("two sessions shared a folder")
    return failures


# ---------------------------------------------------------------- stops

@dataclass
class StopOutcome:
    step_seen: int  # the last step the status line showed when Stop was pressed
    step_ended: int  # steps done when the run ended (its status line and its metrics.json)
    total_steps: int
    seconds_to_end: float  # from pressing Stop to the final status line
    step_seconds: float  # the run's mean step time, from its metrics.json
    steps_on_disk: int  # steps its metrics.json records
    stop_answer: str
    status: str
    memory_after: Optional[int]  # the server's settled RSS once the run had ended (None: not measured)


@dataclass
class StopSession:
    stops: list[StopOutcome]
    final_status: str  # of the tiny training started after the stops
    folder_removed_s: Optional[float]  # from closing the client to its folder's removal


def stop_trainings(app: App, count: int, folder: Path,
                   settled_rss: Optional[Callable[[], int]] = None) -> StopSession:
    """In one session: `count` times start a long training, press Stop once a step is shown, wait for
    the end (and, with `settled_rss`, for the server's memory to settle: it returns freed memory to the
    system just after the final status line). Then a tiny training must complete, and the session closes."""
    from gradio_client import Client, handle_file

    zip_path, _ = colour_zip(folder / "stops", STOP_CLASSES, per_class=40)
    client = Client(app.url, verbose=False)
    session_folder = app.work_root / session_dir_name(client.session_hash)
    client.predict(handle_file(str(zip_path)), 0, 0.25, api_name="/load_zip")
    outcomes = []
    for _ in range(count):
        job = client.submit(*LONG_TRAIN, api_name="/train")
        step_seen = wait_for_a_step(job)
        pressed = time.monotonic()
        answer = client.predict(api_name="/stop")
        status, _ = job.result(timeout=300)
        ended = STOPPED.search(status)
        metrics = json.loads((last_run(session_folder) / "metrics.json").read_text())
        outcomes.append(StopOutcome(
            step_seen=step_seen, step_ended=int(ended.group(1)) if ended else -1,
            total_steps=int(ended.group(2)) if ended else -1, seconds_to_end=time.monotonic() - pressed,
            step_seconds=metrics["seconds"] / max(metrics["steps"], 1), steps_on_disk=metrics["steps"],
            stop_answer=answer, status=status, memory_after=settled_rss() if settled_rss else None,
        ))
    final, _ = client.predict(*TINY_TRAIN, api_name="/train")
    return StopSession(outcomes, final, close_session(client, session_folder))


def wait_for_a_step(job: Any, timeout_s: float = 300.0) -> int:
    """Block until the training's status line shows a step; returns that step."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for status, *_ in reversed(job.outputs()):
            if match := STEP.search(str(status)):
                return int(match.group(1))
        if job.done():
            raise RuntimeError(f"the training ended before showing a step: {job.outputs()[-1:]}")
        time.sleep(0.05)
    raise RuntimeError(f"no training step shown within {timeout_s:.0f} s")


def last_run(session_folder: Path) -> Path:
    """The first trained run of the session's latest comparison (the one Stop ended)."""
    latest = sorted(session_folder.glob("compare-*"))[-1]
    return latest / "seed0" / "uncompressed"


def stop_failures(session: StopSession) -> list[str]:
    """Broken invariants: a run not stopped, or going on for more than one step after Stop; the training
    after the stops not completing; the session folder kept after closing."""
    failures = []
    for index, stop in enumerate(session.stops, 1):
        if not (stop.status.startswith("**Stopped**") and "Stopping" in stop.stop_answer):
            failures.append(f"stop {index}: {stop.stop_answer!r} -> {stop.status!r}")
        elif stop.step_ended > stop.step_seen + 1:
            failures.append(f"stop {index}: Stop pressed at step {stop.step_seen}, the run ended at {stop.step_ended}")
        elif stop.steps_on_disk != stop.step_ended:
            failures.append(f"stop {index}: the status says {stop.step_ended} steps, metrics.json {stop.steps_on_disk}")
    if not session.final_status.startswith("**Done**"):
        failures.append(f"the training after the stops did not complete: {session.final_status!r}")
    if session.folder_removed_s is None:
        failures.append(f"the stopping session's folder was still there {UNLOAD_TIMEOUT_S:.0f} s after closing")
    return failures


# ---------------------------------------------------------------- the measurement

def measure(quick: bool, threads: int) -> dict[str, Any]:
    """Start the app, run the sessions, then the stops, sampling memory and disk; the result as JSON."""
    sessions = SESSIONS[:2] if quick else SESSIONS
    stops = 3 if quick else 10
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="pyra-load-") as tmp, serve_app(Path(tmp), threads) as app:
        folder = Path(tmp)
        probe = Probe(app)
        probe.start()
        memory = {"started": probe.settled_rss(1.0)}
        warm = run_session(app, "warm-up", "viewer", ("alpha", "beta"), folder)  # loads what loads once
        memory["baseline"] = probe.settled_rss()
        t0 = time.monotonic()
        outcomes = run_sessions(app, sessions, folder)
        t1 = time.monotonic()
        memory["peak_sessions"] = probe.peak_rss(t0, t1)
        memory["after_sessions"] = probe.settled_rss()
        disk_after_sessions = (folder_bytes(app.work_root), folder_bytes(app.gradio_temp))
        t2 = time.monotonic()
        stopping = stop_trainings(app, stops, folder, lambda: probe.settled_rss(1.0))
        t3 = time.monotonic()
        memory["peak_stops"] = probe.peak_rss(t2, t3)
        memory["after_each_stop"] = [stop.memory_after for stop in stopping.stops]
        memory["after_stops"] = probe.settled_rss()
        probe.done.set()
        disk = {
            "work_root_peak_sessions": probe.peak_disk(t0, t1)[0], "gradio_temp_peak_sessions": probe.peak_disk(t0, t1)[1],
            "work_root_after_sessions": disk_after_sessions[0], "gradio_temp_after_sessions": disk_after_sessions[1],
            "work_root_end": folder_bytes(app.work_root), "gradio_temp_end": folder_bytes(app.gradio_temp),
            "session_folders_end": sorted(p.name for p in app.work_root.glob("session-*")),
        }
    limit = int(memory["baseline"] * (1 + MEMORY_TOLERANCE))
    failures = session_failures([warm] + outcomes) + stop_failures(stopping)
    if memory["after_sessions"] > limit:
        failures.append(f"memory after the sessions {mb(memory['after_sessions'])} MB > limit {mb(limit)} MB")
    growth = max(memory["after_each_stop"]) - memory["after_each_stop"][0]
    if growth > MEMORY_TOLERANCE * memory["baseline"]:
        failures.append(f"memory grew by {mb(growth)} MB from the first stopped run to a later one")
    if disk["work_root_end"] or disk["session_folders_end"]:
        failures.append(f"the work root still holds {disk['work_root_end']} bytes: {disk['session_folders_end']}")
    return {
        "command": "python benchmarks/session_load.py" + (" --quick" if quick else "") +
                   (f" --threads {threads}" if threads != 1 else ""),
        "machine": machine_info(), "threads": threads, "train_concurrency": os.environ.get("PYRA_TRAIN_CONCURRENCY", "1"),
        "total_seconds": time.monotonic() - started, "sessions_seconds": t1 - t0, "stops_seconds": t3 - t2,
        "warm_up": asdict(warm), "sessions": [asdict(o) for o in outcomes],
        "stops": [asdict(s) for s in stopping.stops], "final_status": stopping.final_status,
        "stop_session_folder_removed_s": stopping.folder_removed_s,
        "memory": memory, "memory_limit": limit, "memory_tolerance": MEMORY_TOLERANCE, "disk": disk,
        "failures": failures,
    }


# ---------------------------------------------------------------- the report

def status_word(status: str) -> str:
    """The bold first word(s) of a status line: Done, Stopped, Training failed, ..."""
    match = re.match(r"\*\*(.+?)\*\*", status)
    return match.group(1) if match else status


def mb(value: float) -> str:
    return f"{value / 2**20:.0f}"


def report_markdown(result: dict[str, Any]) -> str:
    """The figures section of docs/RELIABILITY.md."""
    m, memory, disk, stops = result["machine"], result["memory"], result["disk"], result["stops"]
    sessions = result["sessions"]
    lines = [
        f"Measured with `{result['command']}` on {m['cpu']} ({m['cores_available']} cores available), "
        f"{m['platform']}, Python {m['python']}; torch intra-op threads: {result['threads']}, training jobs "
        f"at once: {result['train_concurrency']}. Total {result['total_seconds']:.0f} s. "
        + ("**All invariants held.**" if not result["failures"] else
           "**Failures:** " + "; ".join(result["failures"])),
        "",
        f"**{len(sessions)} sessions at once** (each: upload a zip of its own classes, train the tiny "
        "comparison, export a run; viewers also draw token maps and inspect layer 1; then close), "
        f"{result['sessions_seconds']:.0f} s in all:",
        "",
        markdown_table(
            ["session", "classes uploaded", "classes it got back (data tab, exported run)", "time", "result",
             "folder removed after closing"],
            [[s["name"], ", ".join(s["classes"]),
              " / ".join(", ".join(seen) for seen in s["classes_seen"].values()), f"{s['seconds']:.0f} s",
              (status_word(s["status"]) or "failed") + (f", {' + '.join(s['views'])}" if s["views"] else "")
              + (f" ({s['error'][:120]}...)" if s["error"] else ""),
              "not removed" if s["folder_removed_s"] is None else f"{s['folder_removed_s']:.1f} s"]
             for s in sessions]),
        "",
        markdown_table(
            ["server memory (RSS, process and children)", "MB"],
            [["after start", mb(memory["started"])],
             ["baseline: after one warm-up session, closed", mb(memory["baseline"])],
             ["peak during the sessions", mb(memory["peak_sessions"])],
             ["after the sessions closed and their folders were removed", mb(memory["after_sessions"])],
             [f"limit checked: baseline + {100 * result['memory_tolerance']:.0f}%", mb(result["memory_limit"])],
             ["peak during the stops (larger inputs: 144 px, batch 32)", mb(memory["peak_stops"])],
             ["after the 1st stopped run / the largest after any later one",
              f"{mb(memory['after_each_stop'][0])} / {mb(max(memory['after_each_stop']))}"],
             ["after the stops", mb(memory["after_stops"])]]),
        "",
        f"Disk: the work root (`PYRA_WORK_ROOT`) peaked at {size_text(disk['work_root_peak_sessions'])} during the "
        f"sessions and held {size_text(disk['work_root_after_sessions'])} once they had closed "
        f"({size_text(disk['work_root_end'])} at the end). Gradio's own folder (`GRADIO_TEMP_DIR`: uploads and "
        f"generated images) held {size_text(disk['gradio_temp_after_sessions'])} after the sessions and "
        f"{size_text(disk['gradio_temp_end'])} at the end: Gradio does not empty it per session.",
        "",
    ]
    seen = [s["step_seen"] for s in stops]
    ended = [s["step_ended"] for s in stops]
    to_end = [s["seconds_to_end"] for s in stops]
    step = [s["step_seconds"] for s in stops]
    lines += [
        f"**{len(stops)} Stops in a row** in one session ({result['stops_seconds']:.0f} s): each time a training "
        "of 50 epochs starts, Stop is pressed as soon as the status line shows a step, and the run ends.",
        "",
        markdown_table(
            ["", "median", "max"],
            [["step shown when Stop was pressed", f"{statistics.median(seen):g}", f"{max(seen)}"],
             ["steps done when the run ended", f"{statistics.median(ended):g}", f"{max(ended)}"],
             ["steps run after Stop", f"{statistics.median(e - s for e, s in zip(ended, seen)):g}",
              f"{max(e - s for e, s in zip(ended, seen))}"],
             ["seconds from Stop to the final status line", f"{statistics.median(to_end):.1f}", f"{max(to_end):.1f}"],
             ["seconds per training step", f"{statistics.median(step):.2f}", f"{max(step):.2f}"]]),
        "",
        f"The training started after the stops: {status_word(result['final_status'])}.",
    ]
    return "\n".join(lines)


def print_summary(result: dict[str, Any]) -> None:
    for s in result["sessions"]:
        print(f"  {s['name']:<10} {s['seconds']:6.1f} s  {s['status'][:40]!r}  seen {s['classes_seen']}  "
              f"folder removed {s['folder_removed_s']}", file=sys.stderr)
    for s in result["stops"]:
        print(f"  stop: shown step {s['step_seen']}, ended at {s['step_ended']}/{s['total_steps']}, "
              f"{s['seconds_to_end']:.1f} s, {s['step_seconds']:.2f} s/step", file=sys.stderr)
    print("  memory MB: " + ", ".join(f"{k} {mb(v) if isinstance(v, int) else [mb(x) for x in v]}"
                                      for k, v in result["memory"].items()), file=sys.stderr)
    print(f"  disk: {result['disk']}", file=sys.stderr)
    print(f"  total {result['total_seconds']:.0f} s; failures: {result['failures'] or 'none'}", file=sys.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog=f"Memory: after the sessions, the server's RSS must stay within baseline + "
               f"{100 * MEMORY_TOLERANCE:.0f}%, and the RSS after each stopped run may not exceed the one after "
               "the first by more than that share of the baseline. The baseline is taken after one whole warm-up "
               "session (imports, allocator pools and caches every process keeps once), so the limits catch "
               "memory that grows with the number of sessions or runs; the margin covers the pools glibc keeps "
               "after a peak and Gradio's state of closed sessions, which it keeps for an hour.")
    parser.add_argument("--quick", action="store_true", help="2 sessions and 3 stops (a smoke run)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per job in the app (OMP_NUM_THREADS)")
    parser.add_argument("--out", type=Path, help="write session_load.json and session_load.md here, not into docs/")
    args = parser.parse_args()
    result = measure(args.quick, args.threads)
    print_summary(result)
    markdown = report_markdown(result)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "session_load.json").write_text(json.dumps(result, indent=1))
        (args.out / "session_load.md").write_text(markdown + "\n")
    else:
        (REPO / "docs" / "perf" / "session_load.json").write_text(json.dumps(result, indent=1))
        write_section(REPO / "docs" / "RELIABILITY.md", "session_load", markdown)
    print(markdown)
    sys.exit(1 if result["failures"] else 0)


if __name__ == "__main__":
    main()
