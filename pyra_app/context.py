"""What every tab's handlers need from the session: the session itself, its data and its latest
comparison (or a message saying what to do first), levels and runs of that comparison, and the
image a visitor sent, checked like a zip's images.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import gradio as gr
from PIL import Image

from pyra.data.images import read_image
from pyra.data.limits import Limits
from pyra.report.methods import method_label
from pyra_app.budget import Budget
from pyra_app.messages import UserError
from pyra_app.session import Session, end_session_by_hash, open_session, sweep_now_and_then, touch
from pyra_app.settings import slider_index
from pyra_app.uploads import discard_upload, upload_name

INPUT_IMAGE_SIDE = 1024  # px: an image sent to token maps / inspect is shrunk to this before use


def session_for(session: Optional[Session], request: Optional[gr.Request]) -> Session:
    """The caller's session, with its work directory created on first use; idle sessions are swept."""
    sweep_now_and_then(Budget.from_env().idle_seconds)
    session = open_session(session, getattr(request, "session_hash", None))
    touch(session)
    return session


def end_of_session(request: gr.Request) -> None:
    """Unload: the browser tab closed; remove the session's directory (a running job then stops)."""
    end_session_by_hash(getattr(request, "session_hash", None))


def has_result(session: Optional[Session]) -> bool:
    return session is not None and session.result is not None and bool(session.result.levels)


def first_run(session: Session) -> Optional[str]:
    """The run a tab shows first: the first PYRA run, else the first one."""
    keys = list(session.result.run_dirs)
    return next((key for key in keys if key.startswith("pyra@")), keys[0] if keys else None)


def require_result(session: Optional[Session]) -> Any:
    if not has_result(session):
        raise UserError("No comparison yet: train one on the Train tab (or press Quick demo) first.")
    return session.result


def require_idle(session: Session) -> None:
    if session.busy:
        raise UserError("A comparison is running in this session: wait for it or press Stop first.")


def require_data(session: Optional[Session]) -> Any:
    if session is None or session.data is None:
        raise UserError("No dataset yet: load a sample or upload a zip on the Data tab first.")
    return session.data


def level_index(result: Any, level: Any) -> int:
    """A slider value as a valid level index of `result`."""
    return slider_index(level or 0, 0, len(result.levels) - 1, "compression level")


def level_schedule(result: Any, level: Any) -> list[int]:
    return list(result.levels[level_index(result, level)].schedule)


def run_dir(result: Any, method: str, level: Any) -> Path:
    """The first seed's run whose model gives `method` ("pyra" | "tome") its accuracy at `level`."""
    try:
        return Path(result.run_for(method, level_index(result, level)))
    except KeyError:
        raise UserError(f"this comparison has no {method_label(method)} run") from None


def level_slider(result: Any) -> gr.Slider:
    """A compression-level slider spanning `result`'s levels, at the trained target."""
    last = len(result.levels) - 1
    return gr.Slider(minimum=0, maximum=max(last, 1), value=last, step=1, interactive=last > 0,
                     label=f"Compression level (0 = uncompressed, {last} = the trained target)")


def layer_slider(result: Any) -> gr.Slider:
    depth = len(result.levels[-1].schedule)
    return gr.Slider(minimum=1, maximum=depth, value=1, step=1, interactive=True, label=f"Layer (1-{depth})")


def level_and_layer_sliders(session: Optional[Session]) -> tuple:
    """A tab's level and layer sliders spanning the session's comparison (unchanged without one)."""
    if not has_result(session):
        return gr.skip(), gr.skip()
    return level_slider(session.result), layer_slider(session.result)


def input_image(path: Any) -> Image.Image:
    """The image a visitor sent to token maps / inspect, checked like a zip's images, at most 1024 px a side."""
    if not path:
        raise UserError("Pick a validation image or an example photo, or upload an image.")
    if not isinstance(path, str) or not Path(path).is_file():
        raise UserError("Image: send the image as an uploaded file (PNG or JPEG).")
    budget, name = Budget.from_env(), upload_name(path)
    try:
        budget.check_image_file(Path(path), name)
        return read_image(Path(path), name, Limits.from_env().max_image_pixels, max_side=INPUT_IMAGE_SIDE)
    except ValueError:
        discard_upload(path)  # refused: it must not keep its disk space
        raise
