"""The app through its HTTP API: `python app.py` in a subprocess, driven by gradio_client.

A tiny configuration keeps it under a minute on 2 CPU cores: a random-init ViT-Tiny at
32 px, one epoch on 3 generated classes, two compression levels, one benchmark repeat.
"""
from __future__ import annotations

import contextlib
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from benchmarks.app_server import TINY_TRAIN, serve_app
from benchmarks.zips import colour_zip


@contextlib.contextmanager
def running_app(folder: Path) -> Iterator[str]:
    """`python app.py` on a free 127.0.0.1 port with its files under `folder` (session folders in
    `folder / "work"`); yields its URL and stops it afterwards."""
    with serve_app(folder) as app:
        yield app.url


@pytest.fixture(scope="module")
def app_url(tmp_path_factory) -> Iterator[str]:
    with running_app(tmp_path_factory.mktemp("app")) as url:
        yield url


def table_rows(value: dict) -> list[list]:
    return value["data"]


def test_upload_train_compare_and_token_maps(app_url, tmp_path, monkeypatch, capsys):
    from gradio_client import Client, handle_file

    client = Client(app_url, verbose=False)
    zip_path = colour_zip(tmp_path / "colours", name="colours.zip")[0]
    summary, gallery, counts, skipped, warnings, *_ = client.predict(
        handle_file(str(zip_path)), 0, 0.25, api_name="/load_zip")
    assert "3 classes" in summary and len(gallery) == 12 and len(table_rows(counts)) == 3

    started = time.monotonic()
    status, _losses = client.predict(*TINY_TRAIN, api_name="/train")
    print(f"tiny comparison trained in {time.monotonic() - started:.1f} s")
    assert status.startswith("**Done**"), status

    results = client.predict(api_name="/results")
    assert results[0]["maximum"] == 1 and results[0]["value"] == 1  # the slider moves to the trained target

    views = [client.predict(level, api_name="/select_level") for level in (0, 1)]
    (text0, table0, verdicts0, hint0, chart0), (text1, table1, verdicts1, hint1, chart1) = views
    assert "Level 1 of 2" in text0 and "Level 2 of 2" in text1
    methods = [row[0] for row in table_rows(table1)]
    assert methods == ["LoRA, uncompressed", "ToMe training-free", "ToMe + LoRA", "PYRA + LoRA"]
    assert table_rows(table0) != table_rows(table1)
    assert "validation images" in hint1 and "points" in verdicts1

    photo = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(photo)
    tome_panel, pyra_panel, _layer, _tome_layer, _pyra_layer, tokens = client.predict(
        handle_file(str(photo)), 1, 1, api_name="/token_maps")
    assert Path(tome_panel).is_file() and Path(pyra_panel).is_file()
    assert len(table_rows(tokens)) >= 1

    picture, _histogram, pairs, text = client.predict(handle_file(str(photo)), "PYRA + LoRA", 1, 1,
                                                      api_name="/inspect_layer")
    assert Path(picture).is_file() and "PYRA" in text

    _tsne_plot, tsne_note = client.predict(api_name="/tsne")
    assert "validation images" in tsne_note

    zip_file, code = client.predict("pyra@0", api_name="/export_run")
    assert sorted(zipfile.ZipFile(zip_file).namelist()) == ["adapter.safetensors", "config.json", "metrics.json"]
    run_python_snippet(code, Path(zip_file), photo, tmp_path / "snippet", monkeypatch, capsys)


def run_python_snippet(code: str, zip_file: Path, photo: Path, folder: Path, monkeypatch, capsys) -> None:
    """The Export tab's "load in Python" snippet runs as shown, next to the downloaded zip."""
    import re
    import shutil

    folder.mkdir()
    zip_name = re.search(r'ZipFile\("([^"]+)"\)', code).group(1)
    shutil.copy(zip_file, folder / zip_name)
    Image.open(photo).save(folder / "photo.jpg")
    monkeypatch.chdir(folder)
    capsys.readouterr()
    exec(compile(code, "snippet.py", "exec"), {"__name__": "snippet"})
    printed = capsys.readouterr().out.splitlines()
    assert printed[-1] in ("red", "green", "blue"), printed


def test_stop_ends_a_long_training(app_url, tmp_path):
    from gradio_client import Client, handle_file

    client = Client(app_url, verbose=False)
    zip_path = colour_zip(tmp_path / "c", name="c.zip", per_class=40)[0]
    client.predict(handle_file(str(zip_path)), 0, 0.25, api_name="/load_zip")
    long_train = list(TINY_TRAIN)
    long_train[4] = 50  # epochs (the slider's maximum): 3 x 50 x 12 steps, far longer than the test waits
    job = client.submit(*long_train, api_name="/train")
    deadline = time.monotonic() + 120
    while not any("step" in str(update) for update in job.outputs()):
        assert not job.done(), f"training ended before Stop: {job.status()}"
        assert time.monotonic() < deadline, f"no training progress: {job.status()}"
        time.sleep(0.5)
    stopped_at = time.monotonic()
    assert "Stopping" in client.predict(api_name="/stop")
    status, _ = job.result(timeout=60)
    assert status.startswith("**Stopped**"), status
    assert time.monotonic() - stopped_at < 30
