"""PYRA Studio: `python app.py` serves the app at http://127.0.0.1:7860 (also a Hugging Face Space entry point).

Host and port follow GRADIO_SERVER_NAME / GRADIO_SERVER_PORT; session files go under PYRA_WORK_ROOT.
"""
from pyra_app import build_demo, launch_kwargs

demo = build_demo()

if __name__ == "__main__":
    demo.launch(**launch_kwargs())
