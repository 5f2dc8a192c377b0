"""Messages for visitors never show the server's paths or a session's id.

The engine names files by path, which is right on one's own machine; on a shared server a
path tells a stranger where things live and, for a session folder, that session's only secret.
`public_text` keeps a path inside a session folder as the part below it (what the visitor's
own files are called: ``compare-001/seed0/pyra``), cuts any other path under the app's folders
to its last part (the file name the visitor chose), and drops the rest.
"""
from __future__ import annotations

import re
import tempfile
from pathlib import Path

from gradio.utils import get_upload_folder

from pyra_app.session import PREFIX, work_root

__all__ = ["public_text"]

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
