"""What a trained model merges, for one image: per-layer token maps and a look inside one layer."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from PIL import Image

from pyra.backbones.factory import data_config
from pyra.data.datasets import make_transform
from pyra.data.images import to_rgb
from pyra.method.patch import geometry, layer_records, set_schedule
from pyra.method.schedule import Method, ScheduleSpec, tokens_per_layer
from pyra.report.methods import method_label
from pyra.report.plots import gate_histogram
from pyra.report.token_maps import MAP_MODES, captioned, layer_inspector, token_map, token_map_panel
from pyra.run.checkpoint import load_run

EXPLANATION = r"""
**Token merging (ToMe).** After attention, each layer splits its tokens alternately into
set A and set B, links every A token to its most similar B token (cosine similarity of the
attention keys), and merges the $r$ best-linked A tokens into their partners by a
size-weighted average $x = \sum s_i x_i / \sum s_i$. The class token is never merged.

**PYRA.** Before the average, the $r$ source tokens $S$ are re-activated from themselves and
their destinations $T$ (both weighted by size):
$M = \mathrm{LN}(S + T)$, channel gate $g_{ch} = 2\,\sigma(W_r^\top M) \in (0, 2)$,
token gate $g_{tok} = 2\,\sigma(M W_D^\top) - 1 \in (-1, 1)$,
$S' = S + (S \odot g_{ch}) \odot g_{tok}$. Only $W_r$ ($r \times 1$), $W_D$ ($1 \times D$) and
the LayerNorm are learned per layer; at initialisation $W_D = 0$ and PYRA equals ToMe.
"""


DISPLAY_SIDE = 448  # px: each per-layer map is drawn at least this large


@dataclass(frozen=True)
class TokenMaps:
    panel: Image.Image  # one tile per layer
    layers: list[Image.Image]  # one captioned map per layer, mean colour of each group, DISPLAY_SIDE px
    outlined: list[Image.Image]  # the same, each merged group outlined and tinted over the photo
    tokens: list[int]  # tokens entering each block, then the tokens left after the last
    schedule: list[int]
    method: str


@dataclass(frozen=True)
class LayerView:
    image: Image.Image
    gate_histogram: Optional[object]  # plotly Figure, PYRA only
    pairs: list[dict]  # one per merge: source, destination, similarity, token gate
    explanation: str
    tokens_in: int
    r: int


@dataclass(frozen=True)
class _Traced:
    picture: np.ndarray  # [S, S, 3] uint8, the image as the model sees it
    records: list
    grid: tuple[int, int]
    num_prefix: int
    schedule: list[int]
    method: str
    tokens: list[int]


def _traced_forward(
    run_dir: Path, image: Image.Image, schedule: Optional[ScheduleSpec], method: Optional[Method]
) -> _Traced:
    model, config = load_run(run_dir)
    trained = model.merge_config.schedule
    set_schedule(model, trained if schedule is None else schedule, method=method, trace_source=True)
    picture = to_rgb(image).resize((config.img_size, config.img_size), Image.BICUBIC)
    x = make_transform(data_config(model), config.img_size)(picture)[None]
    with torch.inference_mode():
        model(x)
    applied = list(model.merge_config.schedule)
    return _Traced(
        picture=np.asarray(picture),
        records=layer_records(model),
        grid=tuple(model.patch_embed.grid_size),
        num_prefix=model.num_prefix_tokens,
        schedule=applied,
        method=model.merge_config.method,
        tokens=tokens_per_layer(applied, geometry(model)),
    )


def token_maps(
    run_dir: Path, image: Image.Image, *, schedule: Optional[ScheduleSpec] = None, method: Optional[Method] = None
) -> TokenMaps:
    """Per-layer merged-token maps of `image` through the run's model (its trained schedule by default)."""
    traced = _traced_forward(Path(run_dir), image, schedule, method)
    sources = [record.source[0] for record in traced.records]
    titles = [f"layer {i + 1}: {traced.tokens[i + 1]} tokens" for i in range(len(sources))]
    panel = token_map_panel(traced.picture, sources, traced.grid, traced.num_prefix, titles=titles)
    side = max(DISPLAY_SIDE, traced.picture.shape[0])
    display = np.asarray(to_rgb(image).resize((side, side), Image.BICUBIC))  # what the model sees, sharper
    label = method_label(traced.method) if traced.method != "none" else "no merging"
    captions = [f"{label} · layer {i + 1}: {traced.tokens[i + 1]} of {traced.tokens[0]} tokens left"
                for i in range(len(sources))]
    maps = {mode: [captioned(token_map(display, source, traced.grid, traced.num_prefix, mode=mode), caption)
                   for source, caption in zip(sources, captions)] for mode in MAP_MODES}
    return TokenMaps(panel, maps["mean"], maps["photo"], traced.tokens, traced.schedule, traced.method)


def inspect_layer(
    run_dir: Path, image: Image.Image, layer: int, *, schedule: Optional[ScheduleSpec] = None,
    method: Optional[Method] = None,
) -> LayerView:
    """Inside one layer (0-based): set A / set B, the merges chosen, and PYRA's gates."""
    traced = _traced_forward(Path(run_dir), image, schedule, method)
    if not 0 <= layer < len(traced.records):
        raise ValueError(f"layer must be between 0 and {len(traced.records) - 1}, got {layer}")
    record = traced.records[layer]
    tokens_in = traced.tokens[layer]
    before = traced.records[layer - 1].source[0] if layer > 0 else torch.eye(tokens_in)
    if record.matching is None:
        picture = layer_inspector(traced.picture, None, before, traced.grid, traced.num_prefix,
                                  token_gate=None, scores=None)
        return LayerView(picture, None, [], EXPLANATION, tokens_in, 0)
    matching = record.matching
    token_gate = record.token_gate[0, :, 0] if record.token_gate is not None else None
    picture = layer_inspector(traced.picture, matching, before, traced.grid, traced.num_prefix,
                              token_gate=token_gate, scores=matching.scores[0])
    histogram = gate_histogram(record.channel_gate[0, 0]) if record.channel_gate is not None else None
    pairs = [
        {
            "source_token": int(2 * matching.src_idx[0, i]),
            "destination_token": int(2 * matching.dst_idx[0, i] + 1),
            "similarity": round(float(matching.scores[0, i]), 4),
            "token_gate": round(float(token_gate[i]), 4) if token_gate is not None else None,
        }
        for i in range(matching.r)
    ]
    return LayerView(picture, histogram, pairs, EXPLANATION, tokens_in, matching.r)
