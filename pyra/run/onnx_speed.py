"""How fast an exported ONNX file runs next to the torch model it came from, on this machine.

    speed = measure_export_speed(column_major_linears(model), "model.onnx", batch=1)
    speed.describe()   # "One image: 15.4 ms in onnxruntime, 27.2 ms in PyTorch ..."

Both runtimes get the same intra-op thread count (torch's), and onnxruntime's idle threads sleep
instead of spinning, so neither takes the cores from the other; the forwards alternate (the first
runtime of each round alternates too), so a slow moment of the machine costs both alike.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from pyra.run.speed import Spread

__all__ = ["ExportSpeed", "measure_export_speed", "runtime_session"]

MIN_ROUNDS, MAX_ROUNDS = 3, 10  # recorded rounds: at least MIN_ROUNDS, then more while within the time budget
TIME_BUDGET_S = 5.0  # seconds of recorded rounds after which no new round starts


@dataclass(frozen=True)
class ExportSpeed:
    """One forward of `batch` images in each runtime, interleaved: milliseconds, median and quartiles."""

    batch: int
    threads: int
    rounds: int
    torch_ms: Spread
    onnxruntime_ms: Spread

    @property
    def speedup(self) -> float:
        """torch's median over onnxruntime's (above 1: the ONNX file is faster)."""
        return self.torch_ms.median / self.onnxruntime_ms.median

    def describe(self) -> str:
        """The timing in a sentence, for a person."""
        what = "One image" if self.batch == 1 else f"A batch of {self.batch}"
        threads = f"{self.threads} thread{'s' * (self.threads > 1)}"
        faster = (f"onnxruntime is {self.speedup:.2f}x as fast" if self.speedup >= 1
                  else f"onnxruntime takes {1 / self.speedup:.2f}x as long")
        return (f"{what}: {self.onnxruntime_ms.median:.1f} ms in onnxruntime, {self.torch_ms.median:.1f} ms in "
                f"PyTorch; {faster} (medians of {self.rounds} interleaved runs each on this machine, {threads}).")

    def to_dict(self) -> dict:
        return {"batch": self.batch, "threads": self.threads, "rounds": self.rounds, "speedup": self.speedup,
                "torch_ms": self.torch_ms.to_dict(), "onnxruntime_ms": self.onnxruntime_ms.to_dict()}


def runtime_session(path: str | Path, threads: int):
    """An onnxruntime CPU session on the file at `path` with `threads` intra-op threads that sleep when idle
    (spinning ones would take the cores from a torch model timed next to it)."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def measure_export_speed(model: nn.Module, path: str | Path, batch: int) -> ExportSpeed:
    """Time `model` (on the CPU, as it will be run in torch) and the ONNX file at `path` (its export) on the
    same random [batch, 3, H, W] images: one warm-up forward each, then MIN_ROUNDS to MAX_ROUNDS rounds,
    no new round after TIME_BUDGET_S seconds."""
    threads = torch.get_num_threads()
    session = runtime_session(path, threads)
    size = model.patch_embed.img_size[0]
    images = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0))
    feed = {session.get_inputs()[0].name: images.numpy()}
    runs = {"torch": lambda: model(images), "onnxruntime": lambda: session.run(None, feed)}
    times: dict[str, list[float]] = {name: [] for name in runs}
    model.eval()
    with torch.inference_mode():
        for run in runs.values():
            run()
        start = time.perf_counter()
        while len(times["torch"]) < MIN_ROUNDS or (len(times["torch"]) < MAX_ROUNDS
                                                   and time.perf_counter() - start < TIME_BUDGET_S):
            order = list(runs) if len(times["torch"]) % 2 == 0 else list(reversed(runs))
            for name in order:
                tic = time.perf_counter()
                runs[name]()
                times[name].append(1000 * (time.perf_counter() - tic))
    return ExportSpeed(batch, threads, len(times["torch"]), Spread.of(times["torch"]), Spread.of(times["onnxruntime"]))
