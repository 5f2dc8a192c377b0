"""PYRA Studio's Gradio app: `build_demo()` returns the Blocks; `python app.py` serves it."""
from pyra_app.ui import build_demo, launch_kwargs

__all__ = ["build_demo", "launch_kwargs"]
