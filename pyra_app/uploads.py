"""Files visitors upload: how they named them, and removing them once they are used or refused.

Gradio keeps every upload in its cache folder (``<cache>/<hash>/<original name>``) until its
own periodic cleanup; a refused or already extracted upload is deleted at once instead.
"""
from __future__ import annotations

from pathlib import Path

from gradio.utils import get_upload_folder

__all__ = ["upload_name", "discard_upload"]


def upload_name(path: str | Path) -> str:
    """The file name the visitor gave (Gradio keeps it as the last part of the cached path)."""
    return Path(path).name


def discard_upload(path: str | Path) -> bool:
    """Delete an uploaded file if it lies in Gradio's upload cache (nothing else is touched). True if deleted."""
    cache = Path(get_upload_folder()).resolve()
    target = Path(path).resolve()
    if not target.is_relative_to(cache) or not target.is_file():
        return False
    target.unlink(missing_ok=True)
    try:
        target.parent.rmdir()  # the per-upload folder, when it is empty now
    except OSError:
        pass
    return True
