"""Merged-token maps: which input patches each token holds, drawn on the image (PIL images out).

Pure functions, no display side effects. Shapes: N_0 input tokens (num_prefix prefix tokens,
then h*w patches in row-major order), N_l tokens after a layer. Prefix tokens (class,
distillation, register) are never merged and hold no patches, so they are not drawn.
"""
from __future__ import annotations

import colorsys
import math
from typing import Literal, Optional, Sequence, Union

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

from pyra.method.merge import Matching

ImageLike = Union[Image.Image, np.ndarray]
Colour = tuple[int, int, int]
MapMode = Literal["mean", "photo"]
MAP_MODES: dict[str, str] = {"mean": "mean colour of each group", "photo": "groups outlined over the photo"}
TINT_ALPHA = 0.45  # "photo" mode: how much of a merged group's tint covers the photo

OUTLINE: Colour = (25, 25, 25)
SET_A: Colour = (235, 120, 20)  # even positions: candidate sources
SET_B: Colour = (35, 105, 215)  # odd positions: candidate destinations
_SIMILARITY_STOPS: list[Colour] = [(244, 150, 115), (203, 24, 29), (103, 0, 13)]  # low -> high
_GATE_STOPS: list[Colour] = [(33, 102, 172), (150, 150, 150), (178, 24, 43)]  # -g -> 0 -> +g


def token_map(
    image: ImageLike, source: Tensor, grid: tuple[int, int], num_prefix: int, *, outline: bool = True,
    mode: MapMode = "mean",
) -> Image.Image:
    """Draw every merged group of patches over the image, outlined where groups meet.

    image: [H, W, 3] uint8 (or PIL), the model input at any resolution (a larger one draws a
    sharper map); source: [N_l, N_0] 0/1 map for one image; grid: (h, w) patches per side.
    mode "mean": each group painted with its mean colour, a 1-px dark outline on the first pixel
    row/column of a group that borders another above/left of it. mode "photo": the photo itself,
    each group of two or more patches tinted with a colour of its own, outlined 2 px wide.
    Returns an RGB image of size (W, H).
    """
    pixels = _rgb_array(image)
    patch_labels = _patch_labels(source, grid, num_prefix)  # [h, w]
    labels = _pixel_labels(patch_labels, pixels.shape[:2])  # [H, W]
    if mode == "photo":
        painted = _tinted(pixels, labels, np.bincount(patch_labels.ravel(), minlength=int(labels.max()) + 1))
        if outline:
            edges = _boundaries(labels)
            edges[:, :-1] |= edges[:, 1:]
            edges[:-1] |= edges[1:]
            painted[edges] = OUTLINE
        return Image.fromarray(painted)
    if mode != "mean":
        raise ValueError(f"mode must be one of {', '.join(MAP_MODES)}, got {mode!r}")
    flat = labels.ravel()
    count = np.bincount(flat)  # pixels per group
    total = np.stack([np.bincount(flat, weights=pixels[..., c].ravel().astype(np.float64)) for c in range(3)], -1)
    mean = total / np.maximum(count, 1)[:, None]  # [groups, 3]
    painted = np.rint(mean[labels]).astype(np.uint8)  # [H, W, 3]
    if outline:
        painted[_boundaries(labels)] = OUTLINE
    return Image.fromarray(painted)


def captioned(image: Image.Image, caption: str, size: int = 20) -> Image.Image:
    """`image` above a white band holding `caption` in a `size`-px font (readable at normal zoom; below the
    image, where no image toolbar covers it)."""
    font = ImageFont.load_default(size=size)
    band = _text_height(font) + 12
    out = Image.new("RGB", (image.width, image.height + band), "white")
    out.paste(image, (0, 0))
    ImageDraw.Draw(out).text((8, image.height + 6), caption, fill=(20, 20, 20), font=font)
    return out


def _tinted(pixels: np.ndarray, labels: np.ndarray, patches_per_group: np.ndarray) -> np.ndarray:
    """The photo with every group of two or more patches tinted by a hue of its own (golden-ratio spaced)."""
    hues = (np.arange(len(patches_per_group)) * 0.618034) % 1.0
    tints = np.array([colorsys.hsv_to_rgb(h, 0.9, 1.0) for h in hues]) * 255.0  # [groups, 3]
    merged = patches_per_group[labels] > 1  # [H, W]
    out = pixels.astype(np.float64)
    out[merged] = (1 - TINT_ALPHA) * out[merged] + TINT_ALPHA * tints[labels[merged]]
    return np.rint(out).astype(np.uint8)


def token_map_panel(
    image: ImageLike,
    sources: Sequence[Tensor],
    grid: tuple[int, int],
    num_prefix: int,
    *,
    titles: Optional[Sequence[str]] = None,
    columns: int = 4,
    cell: int = 160,
) -> Image.Image:
    """One token map per layer in a grid of `columns`, each titled "layer l: N_l tokens".

    sources: per layer [N_l, N_0] maps of one image (e.g. `[s[0] for s in pyra.token_sources(model)]`);
    layers are numbered from 0 as in `pyra.layer_records`. Each map is drawn at `cell` px on its
    longer side. Size: (cols * (cell + 8) + 8, rows * (title + cell + 8) + 8).
    """
    if not sources:
        raise ValueError("token_map_panel needs at least one source map; run a traced forward first")
    if titles is not None and len(titles) != len(sources):
        raise ValueError(f"got {len(titles)} titles for {len(sources)} source maps")
    if columns < 1 or cell < 8:
        raise ValueError(f"columns must be >= 1 and cell >= 8 px, got columns={columns}, cell={cell}")
    maps = [_one_image(s) for s in sources]
    titles = list(titles) if titles is not None else [f"layer {i}: {m.shape[0]} tokens" for i, m in enumerate(maps)]
    picture = _fit(_rgb_array(image), cell)
    font = ImageFont.load_default()
    title_height = _text_height(font) + 6
    pad, columns = 8, min(columns, len(maps))
    rows = math.ceil(len(maps) / columns)
    panel = Image.new("RGB", (columns * (cell + pad) + pad, rows * (title_height + cell + pad) + pad), "white")
    draw = ImageDraw.Draw(panel)
    for i, (source, title) in enumerate(zip(maps, titles)):
        left = pad + (i % columns) * (cell + pad)
        top = pad + (i // columns) * (title_height + cell + pad)
        draw.text((left, top + 1), title, fill=(20, 20, 20), font=font)
        tile = token_map(picture, source, grid, num_prefix)
        panel.paste(tile, (left + (cell - tile.width) // 2, top + title_height + (cell - tile.height) // 2))
    return panel


def source_entering(source_after: Sequence[Tensor], layer: int, index: int = 0) -> Tensor:
    """[N, N_0] map of the tokens entering `layer` for image `index`, from per-layer output maps
    ([B, N_l, N_0], e.g. `pyra.token_sources(model)`); layer 0 gets the identity."""
    if not 0 <= layer < len(source_after):
        raise ValueError(f"layer must be in [0, {len(source_after)}), got {layer}")
    if layer > 0:
        return source_after[layer - 1][index]
    num_inputs = source_after[0].shape[-1]
    return _identity(num_inputs, source_after[0])


def layer_inspector(
    image: ImageLike,
    matching: Optional[Matching],
    source_before: Tensor,
    grid: tuple[int, int],
    num_prefix: int,
    *,
    scores: Optional[Tensor] = None,
    token_gate: Optional[Tensor] = None,
    index: int = 0,
    size: int = 384,
) -> Image.Image:
    """One layer's merges, for teaching: tokens entering it and the r edges A -> B it chose.

    matching: the layer's `LayerRecord.matching` ([B, r] indices; image `index` is drawn), or
    None when it merged nothing; source_before: [N_l, N_0] map of the tokens entering the layer
    (`source_entering`); scores: [r] similarity per edge (default: the matching's own);
    token_gate: [r] (or [r, 1]) PYRA token gate in (-1, 1), which then colours the edges.
    Tokens are dots at the centroid of their patches, orange for set A (even positions),
    blue for set B (odd); edge width grows with similarity. Prefix tokens are not drawn.
    Returns an image `size` px on its longer side plus a legend strip below.
    """
    source = _one_image(source_before).float().cpu().numpy()  # [N_l, N_0]
    labels = _patch_labels(source_before, grid, num_prefix)
    picture = _fit(_rgb_array(image), size)
    height, width = picture.shape[:2]
    faded = (0.45 * picture + 0.55 * 255).astype(np.uint8)
    faded[_boundaries(_pixel_labels(labels, (height, width)))] = (120, 120, 120)
    centres, token_sizes = _centroids(source[num_prefix:, num_prefix:], grid, (height, width))
    pairs, values, colour_scale = _edges(matching, index, source.shape[0], scores, token_gate)
    font = ImageFont.load_default()
    line = _text_height(font) + 6
    canvas = Image.new("RGB", (width, height + 2 * line + 8), "white")
    canvas.paste(Image.fromarray(faded), (0, 0))
    draw = ImageDraw.Draw(canvas)
    widths = _normalise(values[0])
    for (a, b), w, colour_at in zip(pairs, widths, _normalise(values[1], symmetric=token_gate is not None)):
        start, end = tuple(centres[a - num_prefix]), tuple(centres[b - num_prefix])
        draw.line([start, end], fill=_interpolate(colour_scale, colour_at), width=2 + round(3 * w))
    patch_px = min(height / grid[0], width / grid[1])
    sources_merged = {a for a, _ in pairs}
    for t, ((x, y), n) in enumerate(zip(centres, token_sizes)):
        radius = max(2.0, 0.16 * patch_px) * (1 + 0.3 * math.log2(max(n, 1)))
        ring = (0, 0, 0) if t + num_prefix in sources_merged else (255, 255, 255)
        fill = SET_A if (t + num_prefix) % 2 == 0 else SET_B
        draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=fill, outline=ring)
    _legend(draw, font, (height + 4, line), len(pairs), source.shape[0], values, token_gate is not None, colour_scale)
    return canvas


def _legend(draw, font, at: tuple[int, int], r: int, num_tokens: int, values, is_gate: bool, stops) -> None:
    top, line = at
    x = 6
    for colour, label in ((SET_A, "set A (even)"), (SET_B, "set B (odd)")):
        draw.ellipse([x, top + line // 2 - 4, x + 8, top + line // 2 + 4], fill=colour)
        draw.text((x + 12, top + 2), label, fill=(20, 20, 20), font=font)
        x += 16 + round(draw.textlength(label, font=font))
    draw.text((x, top + 2), f"{r} merges: {num_tokens} -> {num_tokens - r} tokens", fill=(20, 20, 20), font=font)
    name, data = ("token gate" if is_gate else "similarity"), values[1]
    if data.size == 0:
        return
    low, high = (-np.abs(data).max(), np.abs(data).max()) if is_gate else (data.min(), data.max())
    top += line
    text = f"{name} {low:+.3f}" if is_gate else f"{name} {low:.2f}"
    draw.text((6, top + 2), text, fill=(20, 20, 20), font=font)
    x = 12 + round(draw.textlength(text, font=font))
    for i in range(100):
        draw.line([(x + i, top + 3), (x + i, top + line - 3)], fill=_interpolate(stops, i / 99))
    draw.text((x + 106, top + 2), f"{high:+.3f}" if is_gate else f"{high:.2f}", fill=(20, 20, 20), font=font)


def _edges(matching, index, num_tokens, scores, token_gate):
    """-> ([(token A, token B)] r pairs, (similarity [r], colour value [r]), colour stops)."""
    if matching is None or matching.r == 0:
        empty = np.zeros(0)
        return [], (empty, empty), _SIMILARITY_STOPS
    src = matching.src_idx[index].cpu().numpy() * 2  # A position i -> token 2i
    dst = matching.dst_idx[index].cpu().numpy() * 2 + 1  # B position j -> token 2j + 1
    if max(src.max(), dst.max()) >= num_tokens:
        raise ValueError("matching does not fit source_before: pass the map of the tokens ENTERING this layer")
    r = len(src)
    similarity = _vector(matching.scores[index] if scores is None else scores, r, "scores")
    if token_gate is None:
        return list(zip(src.tolist(), dst.tolist())), (similarity, similarity), _SIMILARITY_STOPS
    return list(zip(src.tolist(), dst.tolist())), (similarity, _vector(token_gate, r, "token_gate")), _GATE_STOPS


def _vector(values: Tensor, r: int, name: str) -> np.ndarray:
    array = values.detach().float().cpu().numpy().reshape(-1)
    if array.size != r:
        raise ValueError(f"{name} has {array.size} values for {r} merges; pass one image's [r] vector")
    return np.nan_to_num(array, nan=0.0, posinf=1.0, neginf=-1.0)


def _normalise(values: np.ndarray, symmetric: bool = False) -> np.ndarray:
    """Map values to [0, 1]: min..max, or -max|v|..+max|v| (0 -> 0.5) when symmetric."""
    if values.size == 0:
        return values
    if symmetric:
        return 0.5 + 0.5 * values / max(np.abs(values).max(), 1e-12)
    span = values.max() - values.min()
    return (values - values.min()) / span if span > 0 else np.full_like(values, 0.5)


def _interpolate(stops: list[Colour], at: float) -> Colour:
    at = min(max(float(at), 0.0), 1.0) * (len(stops) - 1)
    i = min(int(at), len(stops) - 2)
    t = at - i
    return tuple(round((1 - t) * a + t * b) for a, b in zip(stops[i], stops[i + 1]))  # type: ignore[return-value]


def _centroids(source: np.ndarray, grid: tuple[int, int], shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """source: [T, h*w] patch tokens only -> centres [T, 2] (x, y) in pixels, sizes [T]."""
    h, w = grid
    rows, cols = np.divmod(np.arange(h * w), w)
    centres = np.stack([(cols + 0.5) * shape[1] / w, (rows + 0.5) * shape[0] / h], axis=-1)  # [h*w, 2]
    sizes = source.sum(axis=1)
    return source @ centres / np.maximum(sizes, 1)[:, None], sizes


def _patch_labels(source: Tensor, grid: tuple[int, int], num_prefix: int) -> np.ndarray:
    """[N_l, N_0] -> [h, w] index of the (non-prefix) token holding each patch."""
    source = _one_image(source)
    h, w = grid
    if source.shape[1] - num_prefix != h * w:
        raise ValueError(
            f"source map has {source.shape[1]} input tokens, expected num_prefix + h*w = {num_prefix} + {h}*{w}; "
            "check grid and num_prefix against the model (model.patch_embed.grid_size, model.num_prefix_tokens)"
        )
    patches = source[num_prefix:, num_prefix:].float().cpu().numpy()  # [N_l - P, h*w]
    if not np.all(patches.sum(axis=0) > 0):
        raise ValueError("some patches belong to no token: the source map does not cover the image")
    return patches.argmax(axis=0).reshape(h, w)


def _pixel_labels(patch_labels: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """[h, w] -> [H, W] by nearest patch (pixel y lies in patch row y * h // H)."""
    h, w = patch_labels.shape
    rows = np.arange(shape[0]) * h // shape[0]
    cols = np.arange(shape[1]) * w // shape[1]
    return patch_labels[rows[:, None], cols[None, :]]


def _boundaries(labels: np.ndarray) -> np.ndarray:
    """[H, W] bool: pixels whose upper or left neighbour belongs to another group."""
    mask = np.zeros(labels.shape, dtype=bool)
    mask[1:] |= labels[1:] != labels[:-1]
    mask[:, 1:] |= labels[:, 1:] != labels[:, :-1]
    return mask


def _one_image(source: Tensor) -> Tensor:
    if source.ndim == 3 and source.shape[0] == 1:
        source = source[0]
    if source.ndim != 2:
        raise ValueError(
            f"expected one image's [N_l, N_0] source map, got shape {tuple(source.shape)}; "
            "index the batch, e.g. sources[l][0]"
        )
    return source


def _identity(num_tokens: int, like: Tensor) -> Tensor:
    return torch.eye(num_tokens, device=like.device, dtype=like.dtype)


def _rgb_array(image: ImageLike) -> np.ndarray:
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))
    array = np.asarray(image)
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=-1)
    if array.ndim != 3 or array.shape[2] not in (3, 4) or array.dtype != np.uint8:
        raise ValueError(f"image must be a PIL image or an [H, W, 3] uint8 array, got {array.dtype} {array.shape}")
    return array[..., :3]


def _fit(pixels: np.ndarray, longest: int) -> np.ndarray:
    """Resize so the longer side is `longest` px (bicubic), keeping the aspect ratio."""
    height, width = pixels.shape[:2]
    scale = longest / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return np.asarray(Image.fromarray(pixels).resize(size, Image.Resampling.BICUBIC))


def _text_height(font) -> int:
    left, top, right, bottom = font.getbbox("Ag")
    return int(bottom - min(top, 0))
