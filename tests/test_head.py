"""The head: found in a slice without the text around it, cropped to, normalised, and the same model
input whether or not a source burned text into the slice."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.data.head import bounding_box, head_mask, intracranial_mask, normalize_intensity
from pipeline.data.images import blanked_png, preprocess
from tests.conftest import preprocess_config

THRESHOLD = 0.1


def _ellipse(shape: tuple[int, int], centre: tuple[float, float], axes: tuple[float, float]) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return ((yy - centre[0]) / axes[0]) ** 2 + ((xx - centre[1]) / axes[1]) ** 2 <= 1


# A 64 x 64 "slice": a head (rows 14..46, cols 12..52) with dark ventricles inside, below the threshold.
HEAD = _ellipse((64, 64), (30, 32), (16, 20))
VENTRICLES = _ellipse((64, 64), (30, 32), (4, 6))


def _slice(text: tuple[slice, slice] | None = None, bridge: tuple[slice, slice] | None = None) -> np.ndarray:
    gray = np.where(HEAD, 0.6, 0.0).astype(np.float32)
    gray[VENTRICLES] = 0.05
    for block in (text, bridge):
        if block is not None:
            gray[block] = 1.0
    return gray


CORNER_TEXT = (slice(54, 62), slice(2, 14))  # well away from the head
BELOW_TEXT = (slice(54, 62), slice(26, 38))  # under the head; the head's lowest row is 46
BRIDGE = (slice(46, 54), slice(32, 33))  # one pixel wide, joins the head to BELOW_TEXT


def _text_mask(block: tuple[slice, slice]) -> np.ndarray:
    mask = np.zeros((64, 64), dtype=bool)
    mask[block] = True
    return mask


# --- head_mask -------------------------------------------------------------------------------------


def test_mask_is_the_head_with_its_holes_filled_and_without_text() -> None:
    mask = head_mask(_slice(text=CORNER_TEXT), THRESHOLD)
    np.testing.assert_array_equal(mask, HEAD)
    assert mask[VENTRICLES].all()  # dark inside the head is still head
    assert not mask[_text_mask(CORNER_TEXT)].any()


def test_text_joined_by_a_thin_bridge_is_cut_off() -> None:
    gray = _slice(text=BELOW_TEXT, bridge=BRIDGE)
    mask = head_mask(gray, THRESHOLD)
    assert not mask[_text_mask(BELOW_TEXT)].any()
    assert not mask[48:, :].any()  # nothing of the bridge's far end either
    assert (mask ^ HEAD).sum() <= 3  # at most the bridge's root, next to the skull
    # Without the opening, the text is one component with the head.
    assert head_mask(gray, THRESHOLD, opening=0)[_text_mask(BELOW_TEXT)].all()


def test_largest_component_wins_over_a_bigger_brighter_one_only_by_size() -> None:
    gray = np.zeros((64, 64), dtype=np.float32)
    gray[_ellipse((64, 64), (20, 20), (12, 12))] = 0.3  # the larger one, dimmer
    gray[50:58, 50:58] = 1.0
    mask = head_mask(gray, THRESHOLD)
    assert mask[20, 20] and not mask[54, 54]


def test_empty_slice_gives_an_empty_mask() -> None:
    for gray in (np.zeros((32, 32), np.float32), np.full((32, 32), THRESHOLD, np.float32)):
        mask = head_mask(gray, THRESHOLD)
        assert mask.shape == (32, 32) and mask.dtype == bool and not mask.any()


def test_specks_smaller_than_the_opening_give_an_empty_mask() -> None:
    gray = np.zeros((32, 32), np.float32)
    gray[5:7, 5:7] = gray[20, 3:30] = 1.0  # a 2 x 2 speck and a 1-pixel line
    assert not head_mask(gray, THRESHOLD).any()


# --- bounding_box ----------------------------------------------------------------------------------


def test_bounding_box_widens_by_the_margin_of_the_longer_side() -> None:
    mask = np.zeros((100, 100), dtype=bool)
    mask[30:50, 40:80] = True  # 20 rows, 40 columns
    assert bounding_box(mask, 0.0) == (slice(30, 50), slice(40, 80))
    assert bounding_box(mask, 0.1) == (slice(26, 54), slice(36, 84))  # 0.1 * 40 = 4 pixels each way


def test_bounding_box_is_clipped_to_the_image() -> None:
    mask = np.zeros((20, 30), dtype=bool)
    mask[0:5, 25:30] = True
    assert bounding_box(mask, 0.6) == (slice(0, 8), slice(22, 30))  # pad 3, clipped at 0 and 30
    assert bounding_box(mask, 0.5) == (slice(0, 7), slice(23, 30))  # 2.5 rounds to even


def test_bounding_box_of_an_empty_mask_is_the_whole_image() -> None:
    assert bounding_box(np.zeros((12, 7), dtype=bool), 0.2) == (slice(0, 12), slice(0, 7))


# --- normalize_intensity ---------------------------------------------------------------------------


def test_normalize_maps_the_head_percentiles_to_the_unit_range_and_leaves_outside_alone() -> None:
    gray = np.full((10, 10), 0.9, dtype=np.float32)  # outside: brighter than the head
    mask = np.zeros((10, 10), dtype=bool)
    mask[:, :5] = True
    gray[mask] = np.linspace(0.2, 0.4, 50, dtype=np.float32)
    out = normalize_intensity(gray, mask, 0.0, 100.0)
    assert out[mask].min() == 0.0 and out[mask].max() == 1.0
    np.testing.assert_allclose(out[mask], np.linspace(0, 1, 50), atol=1e-5)
    np.testing.assert_array_equal(out[~mask], gray[~mask])
    # Inner percentiles: values beyond them are clipped, and the order inside is kept.
    clipped = normalize_intensity(gray, mask, 10.0, 90.0)
    assert clipped[mask].min() == 0.0 and clipped[mask].max() == 1.0
    assert (clipped[mask] == 0).sum() >= 5 and (clipped[mask] == 1).sum() >= 5
    assert np.all(np.diff(clipped[mask]) >= 0)


def test_flat_head_or_empty_mask_is_left_unchanged() -> None:
    gray = np.full((8, 8), 0.4, dtype=np.float32)
    gray[0, 0] = 0.0
    mask = gray > 0
    np.testing.assert_array_equal(normalize_intensity(gray, mask, 1.0, 99.0), gray)
    np.testing.assert_array_equal(normalize_intensity(gray, np.zeros_like(mask), 1.0, 99.0), gray)


# --- preprocess and blanked_png --------------------------------------------------------------------


def _textured_slice(rng: np.random.Generator, text: bool) -> np.ndarray:
    gray = np.where(HEAD, rng.uniform(0.3, 0.7, (64, 64)), 0.0).astype(np.float32)
    gray[VENTRICLES] = 0.05
    if text:
        gray[CORNER_TEXT] = 1.0
        gray[2:6, 40:62] = 0.8  # a second line of text, top right
    return gray


def test_text_outside_the_head_does_not_reach_the_model() -> None:
    config = preprocess_config(32, head=True)
    plain, with_text = (_textured_slice(np.random.default_rng(0), text) for text in (False, True))
    np.testing.assert_array_equal(preprocess(with_text, config)[0], preprocess(plain, config)[0])
    # Without the head settings the text is part of the input: the shortcut the head settings remove.
    whole = preprocess_config(32)
    assert np.abs(preprocess(with_text, whole)[0] - preprocess(plain, whole)[0]).max() > 0.5


def test_crop_makes_a_small_off_centre_head_fill_the_frame() -> None:
    canvas = np.zeros((96, 96), dtype=np.float32)
    disc = _ellipse((96, 96), (20, 70), (10, 10))
    yy, xx = np.mgrid[:96, :96]
    canvas[disc] = (0.8 - 0.04 * np.hypot(yy - 20, xx - 70))[disc]  # brighter to the centre
    cropped = preprocess(canvas, preprocess_config(32, head=True))[0]
    whole = preprocess(canvas, preprocess_config(32))[0]
    assert cropped.shape == whole.shape == (32, 32)
    assert (cropped > 0).mean() > 0.65  # a disc fills pi/4 of its square
    assert (whole > 0).mean() < 0.1
    rows, cols = np.nonzero(cropped > 0)
    assert abs(rows.mean() - 15.5) < 1 and abs(cols.mean() - 15.5) < 1  # centred
    assert cropped.max() > 0.95 and cropped[cropped > 0].min() < 0.05  # normalised to the unit range


def test_companion_mask_stays_aligned_with_the_slice() -> None:
    shape = (60, 100)  # not square: the padding must match too
    head = _ellipse(shape, (32, 60), (20, 26))
    blob = _ellipse(shape, (26, 72), (6, 7))
    gray = np.where(head, 0.4, 0.0).astype(np.float32)
    gray[blob] = 0.9
    # Normalised, the head's 0.4 becomes 0 and the blob's 0.9 becomes 1; as it is, halfway is 0.65.
    for config, halfway in ((preprocess_config(48, head=True), 0.5), (preprocess_config(48), 0.65)):
        image, companion = preprocess(gray, config, blob)
        assert companion is not None and companion.shape == image.shape == (48, 48)
        bright, outline = image > halfway, companion > 0.5
        iou = (bright & outline).sum() / (bright | outline).sum()
        assert iou > 0.75, (config.head.crop, iou)
        offset = np.mean(np.nonzero(bright), axis=1) - np.mean(np.nonzero(outline), axis=1)
        assert np.abs(offset).max() < 0.5, (config.head.crop, offset)
    assert preprocess(gray, preprocess_config(48, head=True))[1] is None


def test_blanked_png_keeps_the_head_and_blacks_out_the_rest(tmp_path: Path) -> None:
    pixels = np.round(_textured_slice(np.random.default_rng(1), text=True) * 255).astype(np.uint8)
    source = tmp_path / "slice.png"
    Image.fromarray(pixels).save(source)
    decoded = np.asarray(Image.open(io.BytesIO(blanked_png(source, preprocess_config(32, head=True)))))
    assert decoded.shape == pixels.shape and decoded.dtype == np.uint8
    assert not decoded[~HEAD].any()  # the text is gone
    np.testing.assert_allclose(decoded[HEAD].astype(int), pixels[HEAD].astype(int), atol=1)


def _skull(size: int = 96) -> tuple[np.ndarray, np.ndarray]:
    """A head seen in a brain window: scalp (0.3) round a skull (1.0, 4 px) round the brain (0.45), with
    a 2-pixel bleed (0.85) against the skull's inner table on the right; and the bleed's mask."""
    yy, xx = np.mgrid[:size, :size] - (size - 1) / 2
    r = np.hypot(yy, xx)
    gray = np.where(r < 40, 0.3, 0.0)
    gray = np.where(r < 37, 1.0, gray)
    gray = np.where(r < 33, 0.45, gray)
    bleed = (r < 33) & (r >= 31) & (xx > 20)
    return np.where(bleed, 0.85, gray).astype(np.float32), bleed


def test_the_intracranial_region_holds_the_cavity_and_the_inner_table_only() -> None:
    gray, bleed = _skull()
    head = head_mask(gray, 0.1)
    region = intracranial_mask(gray, head, rim=2)
    r = np.hypot(*(np.mgrid[:96, :96] - 47.5))
    assert region[bleed].all()  # a bleed against the bone is scored
    assert region[(r < 33)].all() and region[(r >= 33) & (r < 34.5)].all()  # cavity, inner table
    assert not region[r >= 35.5].any()  # the outer table and the scalp are not
    assert region.sum() < head.sum()


def test_a_slice_without_a_closed_skull_keeps_its_head() -> None:
    gray, _ = _skull()
    gray[:, 60:] = np.where(gray[:, 60:] == 1.0, 0.3, gray[:, 60:])  # the skull open on one side
    head = head_mask(gray, 0.1)
    np.testing.assert_array_equal(intracranial_mask(gray, head), head)
