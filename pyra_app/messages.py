"""What a visitor reads when something goes wrong: one mapping from an error to its message, and
messages that never show the server's paths or a session's id.

`error_message` is that mapping (input errors as the engine words them, a full disk, anything
else as one line with the details left in the server log); `friendly_errors` turns a handler's
error into a pop-up through it.

The engine names files by path, which is right on one's own machine; on a shared server a
path tells a stranger where things live and, for a session folder, that session's only secret.
`public_text` keeps a path inside a session folder as the part below it (what the visitor's
own files are called: ``compare-001/seed0/pyra``), cuts any other path under the app's folders
to its last part (the file name the visitor chose), and drops the rest.
"""
from __future__ import annotations

import functools
import logging
import re
import tempfile
from collections.abc import Callable
from pathlib import Path

import gradio as gr
from gradio.utils import get_upload_folder

from pyra.files import DiskFullError, is_disk_full
from pyra_app.session import PREFIX, work_root

__all__ = ["UserError", "public_text", "error_message", "friendly_errors"]

log = logging.getLogger("pyra_app")


class UserError(Exception):
    """An input problem the app itself found (no data yet, no image chosen, ...); its text is the message."""

_SESSION_ID = re.compile(re.escape(PREFIX) + r"[A-Za-z0-9_-]+")


def _private_roots() -> list[str]:
    """Folders whose paths are the server's business, longest first (a nested root wins)."""
    roots = {str(work_root()), str(Path(get_upload_folder())), tempfile.gettempdir()}
    roots |= {str(Path(root).resolve()) for root in roots}
    return sorted(roots, key=len, reverse=True)


_PATH_TAIL = r"(/[^\s'\"():,]*)?"


def public_text(text: str) -> str:
    """`text` with paths under the app's folders shortened as above, and no session id."""
    for root in _private_roots():
        inside_session = re.escape(root.rstrip("/")) + "/" + _SESSION_ID.pattern + "/([^\\s'\"():,]+)"
        text = re.sub(inside_session, lambda match: match.group(1), text)
        text = re.sub(re.escape(root.rstrip("/")) + _PATH_TAIL,
                      lambda match: Path(match.group(0)).name if match.group(1) else "the server's folder", text)
    return _SESSION_ID.sub("a session folder", text)


def error_message(error: BaseException, doing: str = "") -> str:
    """What a visitor reads for `error`: the engine's and the app's input errors (ValueError, UserError) as
    they are worded, a full disk with its fix, anything else as one line (its traceback goes to the log,
    about `doing`)."""
    if isinstance(error, (ValueError, UserError)):
        return public_text(str(error))
    if is_disk_full(error):
        what = str(error) if isinstance(error, DiskFullError) else f"not enough disk space ({error.strerror})."
        return public_text(f"{what} The server's disk for session files is full: try again later "
                           "(whoever runs the app can set PYRA_WORK_ROOT to a larger disk).")
    log.error("%s failed", doing or "a request", exc_info=error)
    return public_text(f"Unexpected error ({type(error).__name__}): {error}. Details are in the server log.")


def friendly_errors(handler: Callable) -> Callable:
    """Any error of `handler` reaches the browser as a pop-up with `error_message`'s text, never a traceback."""

    @functools.wraps(handler)
    def wrapper(*args, **kwargs):
        try:
            return handler(*args, **kwargs)
        except gr.Error:
            raise
        except Exception as error:
            raise gr.Error(error_message(error, handler.__name__), print_exception=False) from None

    return wrapper
