"""The worst a visitor may ask of a public Space, and what a second visitor then waits, through the HTTP API.

    python benchmarks/space_abuse.py                          # about 4 minutes; writes the docs
    python benchmarks/space_abuse.py --quick --out /tmp/abuse # smaller images and a 1-minute job limit too

Starts `python app.py` with the default limits except PYRA_JOB_MINUTES=1 (so the run takes
minutes, not the default 15; the waiting time scales with it). Visitor A calls the API raw,
never opening a heartbeat: it uploads the heaviest previews the limits allow (blank 40 MP PNGs,
4 per class), then asks for the two largest trainings the limits allow (default backbone,
PYRA_MAX_TRAININGS trainings, 50 epochs): PYRA_MAX_BATCH images per step at 112 px (which the
app trains in micro-batches that fit PYRA_MAX_TRAIN_MEMORY_MB), and the largest image size whose
one-image estimate fits that limit. Visitor B (gradio_client) asks for a tiny training while A's runs, and records its
place in the queue. Measured: the server's peak resident memory added by each of A's requests
(Linux /proc/PID/clear_refs + VmHWM), the bytes in A's session folder, B's wait. Writes
OUT/perf/space_abuse.json and the figures into docs/RELIABILITY.md between the space_abuse
markers (OUT/space_abuse.md with --out). Exits 1 if a bound is broken.
"""
from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
import threading
import time
import zipfile
from pathlib import Path
from typing import Any

from PIL import Image

from benchmarks.app_server import TINY_TRAIN, serve_app
from benchmarks.http_client import RawClient
from benchmarks.zips import colour_zip
from pyra.backbones.factory import backbone_structure
from pyra.data.limits import DEFAULT_MAX_IMAGE_PIXELS
from pyra.files import size_text
from pyra.report.tables import machine_info, markdown_table, write_section
from pyra.run.plan import largest_forward_batch, micro_batch_for, training_memory_bytes
from pyra_app.budget import Budget, folder_bytes
from pyra_app.settings import TrainSettings, control_values

REPO = Path(__file__).resolve().parents[1]

JOB_MINUTES = 1


def _kb(pid: int, field: str) -> int:
    line = next(line for line in Path(f"/proc/{pid}/status").read_text().splitlines() if line.startswith(field))
    return int(line.split()[1])


def peak_added_mb(pid: int, request) -> tuple[Any, float]:
    """(the request's result, the server's peak resident memory above where it was, in MB)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")
    before = _kb(pid, "VmRSS")
    result = request()
    return result, round((_kb(pid, "VmHWM") - before) / 1024, 1)


def heavy_preview_zip(classes: int, side: int) -> bytes:
    """`classes` folders of 4 identical blank side x side PNGs (a few KB each, side**2 pixels)."""
    buffer = io.BytesIO()
    Image.new("RGB", (side, side)).save(buffer, "PNG")
    png, out = buffer.getvalue(), io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        for c in range(classes):
            for i in range(4):
                archive.writestr(f"class{c:03d}/{i}.png", png)
    return out.getvalue()


def largest_img_size(budget: Budget) -> int:
    """The largest image size (a multiple of the 14 px patch) at which one image per pass fits the memory limit."""
    size = budget.max_img_size // 14 * 14
    while size > 14 and not largest_forward_batch(backbone_structure("default", 10, size), 1,
                                                  budget.max_train_memory_bytes):
        size -= 14
    return size


def run_heavy(app: Any, visitor: RawClient, request: list, heavy: dict[str, Any]) -> None:
    """One training request of visitor A; its outcome, status and the server's peak memory added go into `heavy`."""
    started = time.monotonic()
    (kind, outputs), mb = peak_added_mb(app.pid, lambda: visitor.call("train", *request))
    heavy.update(outcome=kind, status=(outputs[1] if kind == "complete" else outputs), peak_added_mb=mb,
                 seconds=round(time.monotonic() - started, 1))


def heavy_requests(budget: Budget) -> list[tuple[int, int]]:
    """(image size, batch) of the largest trainings allowed: the most images per step, the largest images."""
    return [(112, budget.max_batch), (largest_img_size(budget), 4)]


def measure(quick: bool) -> dict[str, Any]:
    budget = Budget.from_env()
    side = int(DEFAULT_MAX_IMAGE_PIXELS ** 0.5) if not quick else 3000
    classes = 4 if quick else 25
    seeds = tuple(range(budget.max_trainings // 3))
    folder = Path(tempfile.mkdtemp(prefix="space-abuse-"))
    report: dict[str, Any] = {"limits": {k: v for k, v in budget.__dict__.items()}, "job_minutes": JOB_MINUTES,
                              "heavy_trainings": []}
    with serve_app(folder, threads=2, limits={"PYRA_JOB_MINUTES": str(JOB_MINUTES)}) as app:
        visitor_a = RawClient(app.url, timeout_s=1800)
        preview_zip = heavy_preview_zip(classes, side)
        (kind, outputs), mb = peak_added_mb(app.pid, lambda: visitor_a.call(
            "load_zip", visitor_a.upload("heavy.zip", preview_zip), 0, 0.25))
        report["preview"] = {"images": classes * 4, "pixels_each": side * side, "zip_bytes": len(preview_zip),
                             "outcome": kind, "peak_added_mb": mb,
                             "session_bytes": folder_bytes(next(app.work_root.glob("session-*")))}
        print("preview", report["preview"], flush=True)
        visitor_a.call("load_sample", "fashion", 0, 0.25)
        for index, (img_size, batch) in enumerate(heavy_requests(budget)):
            heavy: dict[str, Any] = {}
            request = list(control_values(TrainSettings(img_size=img_size, lora_rank=4, epochs=50, batch_size=batch,
                                                        lr=1e-3, pyra_lr=5e-4, seeds=seeds, num_levels=2,
                                                        bench_repeats=1)))
            thread = threading.Thread(target=run_heavy, args=(app, visitor_a, request, heavy))
            thread.start()
            if index == 0:
                time.sleep(10)  # A's job holds the training slot
                report["second_visitor"] = second_visitor(app, folder)
            thread.join()
            session_dirs = sorted(app.work_root.glob("session-*"))
            structure = backbone_structure("default", 10, img_size)
            per_pass = micro_batch_for(structure, batch, budget.max_train_memory_bytes)  # as the app splits it
            heavy |= {"batch": batch, "forward_batch": per_pass, "trainings": budget.max_trainings, "epochs": 50,
                      "img_size": img_size, "estimate_mb": round(training_memory_bytes(structure, per_pass) / 2**20),
                      "session_bytes_max": max(folder_bytes(p) for p in session_dirs) if session_dirs else 0}
            report["heavy_trainings"].append(heavy)
            print("heavy", heavy, flush=True)
        print("second", report["second_visitor"], flush=True)
    report["failures"] = failures(report, budget)
    return report


def second_visitor(app: Any, folder: Path) -> dict[str, Any]:
    """B asks for a tiny training while A's runs: how long until it starts, and its place in the queue."""
    from gradio_client import Client, handle_file

    client = Client(app.url, verbose=False)
    zip_path, _ = colour_zip(folder / "b", ("near", "far"))
    client.predict(handle_file(str(zip_path)), 0, 0.25, api_name="/load_zip")
    submitted = time.monotonic()
    job = client.submit(*TINY_TRAIN, api_name="/train")
    ranks, started = set(), None
    while not job.done():
        status = job.status()
        if status.rank is not None and status.code.name in ("IN_QUEUE", "SENDING_DATA", "JOINING_QUEUE"):
            ranks.add(int(status.rank) + 1)
        if started is None and any("step" in str(update) or "Starting" in str(update) for update in job.outputs()):
            started = time.monotonic() - submitted
        time.sleep(0.5)
    final = job.outputs()[-1][0] if job.outputs() else ""
    return {"queue_places_seen": sorted(ranks), "waited_s": round(started, 1) if started else None,
            "done_s": round(time.monotonic() - submitted, 1), "status": final}


def failures(report: dict[str, Any], budget: Budget) -> list[str]:
    problems = []
    bound_mb = budget.max_train_memory_bytes / 2**20  # what the limit promises any one request may add
    for name, measured in [("preview", report["preview"])] + [("training", h) for h in report["heavy_trainings"]]:
        if measured["peak_added_mb"] > bound_mb:
            problems.append(f"{name}: the server's peak memory rose by {measured['peak_added_mb']} MB")
    if any(h["session_bytes_max"] > budget.session_disk_bytes for h in report["heavy_trainings"]):
        problems.append("a session folder outgrew its disk budget")
    second = report["second_visitor"]
    if second["waited_s"] is None or second["waited_s"] > JOB_MINUTES * 60 + 60:
        problems.append(f"the second visitor waited {second['waited_s']} s (job limit {JOB_MINUTES} min)")
    if not str(second["status"]).startswith("**Done**"):
        problems.append(f"the second visitor's training did not finish: {second['status']}")
    return problems


def markdown(report: dict[str, Any], command: str) -> str:
    p, s = report["preview"], report["second_visitor"]
    rows = [["preview: a zip of blank PNGs, 4 per class", f"{p['images']} images of {p['pixels_each'] / 1e6:.0f} MP "
             f"({size_text(p['zip_bytes'])} zip)", f"{p['peak_added_mb']:.0f} MB", size_text(p["session_bytes"])]]
    for h in report["heavy_trainings"]:
        rows.append(["largest training allowed", f"{h['trainings']} trainings, batch {h['batch']} at {h['img_size']} "
                     f"px in passes of {h['forward_batch']} (estimate {h['estimate_mb']} MB), 50 epochs",
                     f"{h['peak_added_mb']:.0f} MB", size_text(h["session_bytes_max"])])
    table = markdown_table(["visitor A asks for", "exactly", "server peak memory added", "largest session folder"],
                           rows)
    endings = "; ".join(dict.fromkeys(h["status"] for h in report["heavy_trainings"]))
    return (f"`{command}` (2 cores, 2 threads; default limits, PYRA_JOB_MINUTES={report['job_minutes']}):\n\n"
            f"{table}\n\nA's trainings ended as: {endings}\n\n"
            f"Visitor B, asking for a tiny training 10 s into A's first job: queue places shown "
            f"{s['queue_places_seen']}, started after {s['waited_s']} s, done after {s['done_s']} s. "
            + ("Every bound held." if not report["failures"] else "Broken: " + "; ".join(report["failures"])) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    report = measure(args.quick) | {"machine": machine_info()}
    command = "python benchmarks/space_abuse.py" + (" --quick" if args.quick else "")
    report["command"] = command
    out = args.out or REPO / "docs"
    (out / "perf").mkdir(parents=True, exist_ok=True)
    (out / "perf" / "space_abuse.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
    text = markdown(report, command)
    if args.out is None:
        write_section(REPO / "docs" / "RELIABILITY.md", "space_abuse", text)
    else:
        (out / "space_abuse.md").write_text(text)
    print(text)
    sys.exit(1 if report["failures"] else 0)


if __name__ == "__main__":
    main()
