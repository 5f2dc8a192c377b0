"""Faults while runs are written: a process killed mid-save, a full disk, a diverging training.

A run folder always reads as a complete run or as visibly incomplete, never as a half-written
file or a mix of two saves; the user is told what happened in words, and earlier results stay
usable. The full disk is the kernel's own refusal: a forked process lowers RLIMIT_FSIZE and
ignores SIGXFSZ, so its writes past the limit fail with EFBIG.
"""
from __future__ import annotations

import errno
import json
import os
import random
import resource
import select
import signal
import time
import traceback
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

import gradio as gr
import pytest
import torch
from safetensors import safe_open

from benchmarks.app_server import TINY_TRAIN
from benchmarks.zips import colour_zip
from pyra.data.datasets import load_dataset
from pyra.data.limits import DataError
from pyra.files import DiskFullError
from pyra.run.checkpoint import ADAPTER_FILE, CONFIG_FILE, METRICS_FILE, RUN_FILES, load_metrics, load_run, save_run
from pyra.run.run_config import CheckpointError, RunConfig, build_model
from pyra_app import tab_compare, tab_data, tab_token_maps, tab_train
from pyra_app.messages import friendly_errors

DIVERGING_TRAIN = TINY_TRAIN[:4] + (3, 8, 1e10, 1e10) + TINY_TRAIN[8:]  # a learning rate no run survives
KILLS = 10


@pytest.fixture(autouse=True)
def work_root(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "work"
    monkeypatch.setenv("PYRA_WORK_ROOT", str(root))
    return root


def big_adapter_config() -> RunConfig:
    """Random-init ViT-Tiny with rank-64 LoRA on every linear layer: a ~10 MB adapter, slow enough to be
    killed while it is written."""
    return RunConfig(backbone="random:vit_tiny_patch16_224", img_size=32, num_classes=3, classes=("a", "b", "c"),
                     schedule=(1, 1, 1) + (0,) * 9, method="pyra", lora_rank=64,
                     lora_targets=("qkv", "proj", "fc1", "fc2"))


def save_numbered(run_dir: Path, model: torch.nn.Module, config: RunConfig, index: int) -> None:
    """A save whose three files all carry `index`, so a mix of two saves is visible."""
    with torch.no_grad():
        model.head.bias.fill_(index)
    save_run(run_dir, model, replace(config, data_source=f"save-{index}"), metrics={"index": index})


def saved_index(run_dir: Path) -> int:
    """The index of the save a run folder holds; fails if its files come from different saves."""
    model, config = load_run(run_dir)
    index = load_metrics(run_dir)["index"]
    assert config.data_source == f"save-{index}", f"{run_dir}: config and metrics from different saves"
    assert torch.all(model.head.bias == index), f"{run_dir}: adapter and metrics from different saves"
    return index


def in_forked_child(work: Callable[[], object]) -> tuple[int, int]:
    """Run `work` in a forked process; returns (pid, read end of a pipe the child writes lines to).

    `work` gets the pipe's write end as `os.environ["FAULT_PIPE"]`; the child never returns to pytest.
    """
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        os.environ["FAULT_PIPE"] = str(write_end)
        code = 1
        try:
            work()
            code = 0
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(code)
    os.close(write_end)
    return pid, read_end


def tell_parent(line: str) -> None:
    os.write(int(os.environ["FAULT_PIPE"]), (line + "\n").encode())  # short: one atomic pipe write


def read_lines(read_end: int) -> list[str]:
    """Everything the child wrote, up to its exit."""
    chunks = []
    while chunk := os.read(read_end, 65536):
        chunks.append(chunk)
    os.close(read_end)
    return b"".join(chunks).decode().splitlines()


def wait_for_line(read_end: int, timeout_s: float = 60.0) -> None:
    """Block until the child has written at least one line."""
    ready, _, _ = select.select([read_end], [], [], timeout_s)
    assert ready, "the saving process wrote nothing"


# ---------------------------------------------------------------- a process killed while saving

def test_a_process_killed_while_saving_leaves_every_completed_run_readable(tmp_path):
    """Ten SIGKILLs at random moments of a loop that saves new sibling runs and overwrites one run.

    After each kill: every run reported saved loads, with its three files from the same save;
    the overwritten run holds one whole save; a run cut short has no config.json and is refused as
    incomplete; every file under a final name parses; anything else is a temp file.
    """
    root = tmp_path / "runs"
    config = big_adapter_config()
    model = build_model(config)
    rng = random.Random(0)
    saved: list[int] = []
    latest = highest = -1
    cut_short: set[str] = set()
    for _ in range(KILLS):
        first = highest + 2  # past any save the last child may have started unreported: indices stay unique

        def save_forever(first: int = first) -> None:
            for index in range(first, first + 10_000):
                save_numbered(root / f"run-{index:04d}", model, config, index)
                tell_parent(f"run {index}")
                save_numbered(root / "latest", model, config, index)
                tell_parent(f"latest {index}")

        pid, read_end = in_forked_child(save_forever)
        wait_for_line(read_end)
        time.sleep(rng.uniform(0.0, 0.4))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        reports = [line.split() for line in read_lines(read_end)]
        new_runs = [int(index) for kind, index in reports if kind == "run"]
        saved += new_runs
        latest = max([latest] + [int(index) for kind, index in reports if kind == "latest"])
        highest = max([highest] + [int(index) for _, index in reports])

        for index in new_runs:
            assert saved_index(root / f"run-{index:04d}") == index
        if (root / "latest" / CONFIG_FILE).is_file():
            assert saved_index(root / "latest") >= latest  # the last save reported, or the one just finished
        for folder in root.iterdir():
            assert_final_files_parse(folder)
            if not (folder / CONFIG_FILE).is_file():  # refused by name: incomplete, or empty
                cut_short.add(folder.name)
                with pytest.raises(CheckpointError, match="incomplete" if any(folder.iterdir()) else "not found"):
                    load_run(folder)
    assert all(saved_index(root / f"run-{index:04d}") == index for index in saved)  # later kills changed none
    print(f"{KILLS} kills, {len(saved)} runs saved, {len(cut_short)} folders cut short")
    assert len(saved) >= KILLS  # every child completed a save before its kill


def assert_final_files_parse(folder: Path) -> None:
    """Files under a run file's name are whole; any other file is a temp file of one of them."""
    for path in folder.iterdir():
        if path.name == ADAPTER_FILE:
            with safe_open(str(path), framework="pt") as adapter:
                assert list(adapter.keys())
        elif path.name in (CONFIG_FILE, METRICS_FILE):
            json.loads(path.read_text())
        else:
            assert any(path.name.startswith(f".{name}.") and path.name.endswith(".tmp") for name in RUN_FILES), path


def test_saving_again_removes_temp_files_left_by_an_interrupted_save(tmp_path):
    config = big_adapter_config()
    model = build_model(config)
    run_dir = tmp_path / "run"
    save_numbered(run_dir, model, config, 1)
    for name in RUN_FILES:  # what a save killed before its renames leaves behind
        (run_dir / f".{name}.abc123.tmp").write_bytes(b"half")
    (run_dir / "notes.txt").write_text("not ours")
    save_numbered(run_dir, model, config, 2)
    assert {p.name for p in run_dir.iterdir()} == {*RUN_FILES, "notes.txt"}
    assert saved_index(run_dir) == 2


# ---------------------------------------------------------------- a full disk

def with_file_size_limit(limit_bytes: int) -> None:
    """From now on this process cannot write a file past `limit_bytes`: the kernel answers EFBIG."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # else the signal kills the process
    _, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, hard))


def test_a_full_disk_fails_with_a_clear_message_and_keeps_the_run_it_was_replacing(tmp_path):
    config = big_adapter_config()
    model = build_model(config)
    previous, run_dir = tmp_path / "previous", tmp_path / "run"
    save_numbered(previous, model, config, 1)
    save_numbered(run_dir, model, config, 2)

    def save_past_the_limit() -> None:
        with_file_size_limit(1 << 20)  # the adapter is ~10 MB
        try:
            save_numbered(run_dir, model, config, 3)
            tell_parent("saved")
        except DiskFullError as error:
            tell_parent(f"{error.errno} {error}")

    pid, read_end = in_forked_child(save_past_the_limit)
    lines = read_lines(read_end)
    assert os.waitpid(pid, 0)[1] == 0
    code, _, message = lines[0].partition(" ")
    assert int(code) == 27  # EFBIG, from the kernel
    assert message.startswith(f"not enough disk space to write {ADAPTER_FILE} in {run_dir} (File too large)")
    assert "Free some space" in message and "unchanged" in message
    assert saved_index(run_dir) == 2 and saved_index(previous) == 1
    assert {p.name for p in run_dir.iterdir()} == set(RUN_FILES)  # no temp file left


def test_the_app_reports_a_full_disk_during_training_and_keeps_the_previous_results(work_root):
    request = SimpleNamespace(session_hash="full-disk")
    session = tab_data.load_sample(None, "textures", 6, 0.25, request)[0]

    def train_twice() -> None:
        statuses = [status for _, status, _ in tab_train.train(request, session, *TINY_TRAIN)]
        first = session.result
        with_file_size_limit(16 << 10)  # data and the first comparison are written; a new adapter is ~80 KB
        popup = ""
        try:
            for _, status, _ in tab_train.train(request, session, *TINY_TRAIN):
                statuses.append(status)
        except gr.Error as error:
            popup = error.message
        readable = all(load_run(path)[1].classes == tuple(first.classes) for path in first.run_dirs.values())
        tell_parent(json.dumps({"statuses": statuses, "popup": popup, "kept": session.result is first,
                                "readable": readable, "levels": len(session.result.levels)}))

    pid, read_end = in_forked_child(train_twice)
    lines = read_lines(read_end)
    assert os.waitpid(pid, 0)[1] == 0, lines
    report = json.loads(lines[0])
    assert report["statuses"][0].startswith("**Starting**")
    assert any(status.startswith("**Done**") for status in report["statuses"])
    failed = report["statuses"][-1]
    assert failed.startswith("**Training failed**: not enough disk space to write adapter.safetensors in "
                             "compare-002/seed0/"), failed
    assert str(work_root) not in failed and "session-" not in failed  # no server path, no session id
    assert "PYRA_WORK_ROOT" in failed and "Traceback" not in failed and "unexpected" not in failed
    assert report["popup"] in failed
    assert report["kept"] and report["readable"] and report["levels"] == 2


def test_a_full_disk_while_extracting_an_upload_says_so_and_leaves_nothing(tmp_path):
    zip_path = colour_zip(tmp_path / "photos", name="photos.zip", per_class=4)[0]  # PNG entries of about 1.7 KB
    workdir = tmp_path / "session"

    def extract_past_the_limit() -> None:
        with_file_size_limit(512)
        try:
            load_dataset(zip_path, workdir)
            tell_parent("loaded")
        except DataError as error:
            tell_parent(str(error))

    pid, read_end = in_forked_child(extract_past_the_limit)
    lines = read_lines(read_end)
    assert os.waitpid(pid, 0)[1] == 0, lines
    assert lines[0].startswith("photos.zip: not enough disk space to extract it (File too large)")
    assert str(workdir) not in lines[0]
    assert "Free some space" in lines[0]
    assert list(workdir.iterdir()) == []  # the half-extracted folder is removed


def test_any_app_action_that_hits_a_full_disk_says_so_in_words(work_root):
    @friendly_errors
    def export() -> None:
        raise OSError(errno.ENOSPC, "No space left on device", str(work_root / "exports" / "run.zip"))

    with pytest.raises(gr.Error) as caught:
        export()
    assert caught.value.message == ("not enough disk space (No space left on device). The server's disk for session "
                                    "files is full: try again later (whoever runs the app can set PYRA_WORK_ROOT to "
                                    "a larger disk).")


# ---------------------------------------------------------------- a diverging training

def test_a_diverging_training_is_explained_and_the_previous_results_stay_usable():
    """A non-finite loss or gradient: the status line and a warning pop-up say which training stopped,
    at which step and what to change; the previous comparison stays on screen and usable."""
    request = SimpleNamespace(session_hash="diverging")
    session = tab_data.load_sample(None, "textures", 6, 0.25, request)[0]
    for _ in tab_train.train(request, session, *TINY_TRAIN):
        pass
    first = session.result
    with pytest.warns(UserWarning, match="Training diverged: LoRA, uncompressed"):  # gr.Warning, outside a server
        statuses = [status for _, status, _ in tab_train.train(request, session, *DIVERGING_TRAIN)]

    last = statuses[-1]
    assert last.startswith("**Training diverged**: LoRA, uncompressed, seed 0: step "), last
    assert ("the loss is nan" in last or "the gradient norm is nan" in last) and "Lower lr (now 1e+10)" in last
    assert session.result is first and not session.busy
    diverged = session.workdir / "compare-002" / "seed0" / "uncompressed"
    assert load_metrics(diverged)["status"] == "diverged"
    assert all(torch.isfinite(p).all() for p in load_run(diverged)[0].parameters())  # last good weights

    level_text, table, *_ = tab_compare.select_level(session, 1)
    assert "Level 2 of 2" in level_text and len(table) == 4
    image = session.workdir / "picked.png"  # the Image input hands the handler a file path
    session.data.val[0].load().save(image)
    _, tome_panel, pyra_panel, *_ = tab_token_maps.show_token_maps(session, str(image), 1, 1)
    assert tome_panel is not None and pyra_panel is not None
