"""Token maps and plots: colours match the source maps, figures have the expected traces."""
from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import pytest
import timm
import torch

import pyra
from pyra.report import plots, token_maps

GRID, PATCH, PREFIX = (4, 4), 8, 1  # 32 x 32 image, 16 patches + class token


@pytest.fixture
def image() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, size=(32, 32, 3), dtype=np.uint8)


def patch_pixels(image: np.ndarray, row: int, col: int) -> np.ndarray:
    return image[row * PATCH:(row + 1) * PATCH, col * PATCH:(col + 1) * PATCH]


def identity_source() -> torch.Tensor:
    return torch.eye(PREFIX + GRID[0] * GRID[1])


def test_identity_source_paints_each_patch_its_mean(image):
    painted = token_maps.token_map(image, identity_source(), GRID, PREFIX)
    assert painted.size == (32, 32)
    out = np.asarray(painted).astype(float)
    for row, col in [(0, 0), (1, 2), (3, 3)]:
        mean = patch_pixels(image, row, col).reshape(-1, 3).mean(0)
        interior = patch_pixels(out, row, col)[1:, 1:]  # the outline sits on a group's first row/column
        assert np.abs(interior - mean).max() <= 1
    plain = np.asarray(token_maps.token_map(image, identity_source(), GRID, PREFIX, outline=False)).astype(float)
    assert np.abs(patch_pixels(plain, 2, 1) - patch_pixels(image, 2, 1).reshape(-1, 3).mean(0)).max() <= 1


def test_merged_patches_share_their_size_weighted_mean(image):
    source = identity_source()
    a, b = PREFIX + 5, PREFIX + 6  # patches (1, 1) and (1, 2): merge b into a
    source[a, b] = 1
    source = torch.cat([source[:b], source[b + 1:]])  # [N_0 - 1, N_0]
    out = np.asarray(token_maps.token_map(image, source, GRID, PREFIX, outline=False)).astype(float)
    expected = (patch_pixels(image, 1, 1).reshape(-1, 3).mean(0) + patch_pixels(image, 1, 2).reshape(-1, 3).mean(0)) / 2
    for col in (1, 2):
        assert np.abs(patch_pixels(out, 1, col) - expected).max() <= 1
    outlined = np.asarray(token_maps.token_map(image, source, GRID, PREFIX))
    assert not (outlined[PATCH + 3, 2 * PATCH] == token_maps.OUTLINE).all()  # no line inside a group
    assert (outlined[PATCH + 3, 3 * PATCH] == token_maps.OUTLINE).all()  # a line between groups


def test_photo_mode_tints_only_merged_groups_over_the_photo(image):
    """Outline over the photo: a patch on its own keeps the photo's pixels (inside its outline); the two merged
    patches are blended with one tint, TINT_ALPHA of it, the same colour for both."""
    source = identity_source()
    a, b = PREFIX + 5, PREFIX + 6  # merge patch (1, 2) into (1, 1)
    source[a, b] = 1
    source = torch.cat([source[:b], source[b + 1:]])
    big = np.kron(image, np.ones((4, 4, 1), dtype=np.uint8))  # the same photo at 128 px: 32 px per patch
    out = np.asarray(token_maps.token_map(big, source, GRID, PREFIX, mode="photo")).astype(float)
    cell = 4 * PATCH
    alone = out[3 * cell + 2:4 * cell - 2, 3 * cell + 2:4 * cell - 2]  # patch (3, 3), inside its 2-px outline
    assert np.array_equal(alone, big[3 * cell + 2:4 * cell - 2, 3 * cell + 2:4 * cell - 2])
    inside = (slice(cell + 2, 2 * cell - 2), slice(cell + 2, 3 * cell - 2))  # the merged pair, inside the outline
    tint = (out[inside] - (1 - token_maps.TINT_ALPHA) * big[inside]) / token_maps.TINT_ALPHA
    assert np.abs(tint - tint.reshape(-1, 3).mean(0)).max() <= 1.5 / token_maps.TINT_ALPHA  # one colour (rounding)
    assert (out[2 * cell, cell:3 * cell] == token_maps.OUTLINE).all()  # the line below the pair
    with pytest.raises(ValueError, match="mode must be one of"):
        token_maps.token_map(image, source, GRID, PREFIX, mode="sketch")


def test_a_caption_sits_below_the_map_not_on_it(image):
    picture = token_maps.token_map(image, identity_source(), GRID, PREFIX)
    shown = token_maps.captioned(picture, "PYRA + LoRA · layer 3: 41 of 65 tokens left")
    assert shown.width == picture.width and shown.height > picture.height + 20
    assert np.array_equal(np.asarray(shown)[:picture.height], np.asarray(picture))
    assert (np.asarray(shown)[picture.height:] < 128).any()  # the text is drawn in the band


def test_bad_grid_is_reported(image):
    with pytest.raises(ValueError, match="num_prefix"):
        token_maps.token_map(image, identity_source(), (3, 3), PREFIX)


def test_panel_grows_with_layers_and_has_titles(image):
    one = token_maps.token_map_panel(image, [identity_source()], GRID, PREFIX, cell=64)
    five = token_maps.token_map_panel(image, [identity_source()] * 5, GRID, PREFIX, cell=64, columns=4)
    assert five.width > one.width and five.height > one.height
    title_strip = np.asarray(one)[8:18, 8:8 + 64]
    assert (title_strip < 128).any()  # dark title text on white


def test_traced_forward_gives_panel_and_inspector():
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=64, num_classes=3).eval()
    pyra.patch(model, "pyra", 2, trace_source=True)
    with torch.no_grad():
        for block in model.blocks[:8]:  # 17 tokens merge 2 at a time for 8 layers
            block.pyra.w_d.normal_(0, 0.1)  # non-zero token gates
        model(torch.randn(1, 3, 64, 64))
    grid, prefix = model.patch_embed.grid_size, model.num_prefix_tokens
    picture = np.random.default_rng(1).integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
    sources = [s[0] for s in pyra.token_sources(model)]
    panel = token_maps.token_map_panel(picture, sources, grid, prefix, columns=6, cell=96)
    assert panel.width == 6 * (96 + 8) + 8 and panel.height > 2 * 96

    records = pyra.layer_records(model)
    before = token_maps.source_entering(pyra.token_sources(model), 1)
    assert before.shape == (15, 17)
    record = records[1]
    inspector = token_maps.layer_inspector(picture, record.matching, before, grid, prefix,
                                    token_gate=record.token_gate[0, :, 0], scores=record.matching.scores[0], size=256)
    assert inspector.width == 256 and inspector.height > 256
    plain = token_maps.layer_inspector(picture, record.matching, before, grid, prefix, size=256)
    assert plain.size == inspector.size
    with pytest.raises(ValueError, match="ENTERING"):
        token_maps.layer_inspector(picture, records[7].matching, sources[7], grid, prefix)  # 3 -> 1 tokens


def test_gate_histogram():
    figure = plots.gate_histogram(torch.rand(1, 1, 48) * 2)
    assert isinstance(figure, go.Figure) and len(figure.data) == 1 and len(figure.layout.shapes) == 1


def test_training_curves_mixed_history():
    steps = [{"step": s, "loss": 2.0 / (s + 1), "lr": 1e-3, "epoch": s // 5} for s in range(10)]
    evals = [{"epoch": 0, "val_accuracy": 0.5}, {"epoch": 1, "val_accuracy": 0.7}]
    figure = plots.training_curves(steps[:5] + evals[:1] + steps[5:] + evals[1:])
    assert len(figure.data) == 2
    assert list(figure.data[1].x) == [4, 9]  # last step of each epoch
    assert len(plots.training_curves(steps).data) == 1
    unaligned = plots.training_curves(steps + [{"epoch": 7, "val_accuracy": 0.9}])
    assert unaligned.data[1].xaxis == "x2"


def test_accuracy_vs_throughput_one_trace_per_method():
    rows = [
        {"method": "uncompressed", "schedule_label": "r=0", "accuracy": 0.8, "accuracy_low": 0.75,
         "accuracy_high": 0.84, "throughput": 40.0},
    ] + [
        {"method": m, "schedule_label": label, "accuracy": acc, "accuracy_low": acc - 0.05,
         "accuracy_high": acc + 0.03, "throughput": speed}
        for m in ("tome", "pyra") for label, acc, speed in (("low", 0.78, 60.0), ("high", 0.7, 90.0))
    ]
    figure = plots.accuracy_vs_throughput(rows, highlight={"method": "pyra", "schedule_label": "high"})
    assert len(figure.data) == 3
    pyra_trace = figure.data[2]
    assert list(pyra_trace.marker.size) == [8, 18]
    np.testing.assert_allclose(pyra_trace.error_y.array, [0.03, 0.03])
    np.testing.assert_allclose(pyra_trace.error_y.arrayminus, [0.05, 0.05])


def test_confusion_and_per_class_figures():
    figure = plots.confusion_matrix_figure([[5, 1], [2, 7]], ["cat", "dog"], "PYRA")
    assert len(figure.data) == 1 and figure.layout.title.text == "PYRA"
    with pytest.raises(ValueError):
        plots.confusion_matrix_figure([[5, 1]], ["cat", "dog"], "bad")
    bars = plots.per_class_accuracy_figure({"tome": {"cat": 0.5, "dog": 0.9}, "pyra": {"cat": 0.6, "dog": 0.8}})
    assert len(bars.data) == 2 and list(bars.data[0].x) == ["cat", "dog"]


def test_tsne_one_subplot_per_method():
    rng = np.random.default_rng(0)
    labels = np.arange(20) % 3
    features = {"tome": rng.normal(size=(20, 8)), "pyra": rng.normal(size=(20, 8))}
    figure = plots.tsne_figure(features, labels, ["a", "b", "c"], seed=0)
    assert len(figure.data) == 2 * 3
    assert {trace.xaxis for trace in figure.data} == {"x", "x2"}
    assert sum(trace.showlegend for trace in figure.data) == 3


def test_training_curves_from_epochs_only():
    figure = plots.training_curves([{"epoch": 1, "val_accuracy": 0.4}, {"epoch": 2, "val_accuracy": 0.6}])
    assert len(figure.data) == 2 and list(figure.data[1].x) == [1, 2] and figure.layout.xaxis.title.text == "epoch"
