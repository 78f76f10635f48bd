"""How /spot covers an image with tiles: counted without listing them, and a large image's analysis size is
the largest within SPOT_MAX_TILES, aspect kept (the route's tests send real photos; these sweep sizes)."""

import random
import time

import numpy as np
import pytest

from contract.views import analysis_size, tile_count, tile_positions, tiles, tiles_along
from service.spot import assemble, heatmap


@pytest.mark.parametrize("size", [32, 64])
def test_tiles_are_counted_as_tile_positions_places_them(size):
    assert [tiles_along(n, size) for n in range(1, 700)] == [len(tile_positions(n, size)) for n in range(1, 700)]


@pytest.mark.parametrize("max_tiles", [16, 256, 1024])
def test_the_analysis_size_is_the_largest_within_the_limit_aspect_kept(max_tiles):
    rng = random.Random(0)
    for _ in range(2000):
        h, w = rng.randint(1, 6000), rng.randint(1, 6000)
        ah, aw = analysis_size(h, w, 64, max_tiles)
        short = min(ah, aw)
        assert short >= 64 and abs(ah / aw - h / w) <= 1 / min(ah, aw)  # aspect to the pixel
        fits = tile_count(ah, aw, 64) <= max_tiles
        assert fits or short == 64, (h, w)  # over the limit only when the shorter side cannot shrink further
        if fits and short < min(h, w):  # shrunk: one pixel more would not fit
            grown = (round(h * (short + 1) / min(h, w)), round(w * (short + 1) / min(h, w)))
            assert tile_count(*grown, 64) > max_tiles, (h, w)


def test_sizes_within_the_limit_are_kept_and_small_ones_scaled_up():
    assert analysis_size(427, 640, 64, 1024) == (427, 640)
    assert analysis_size(1056, 1056, 64, 1024) == (1056, 1056)  # exactly 1024 tiles
    assert analysis_size(1057, 1057, 64, 1024) == (1056, 1056)
    assert analysis_size(20, 50, 64, 1024) == (64, 160)
    assert analysis_size(3024, 4032, 64, 0) == (3024, 4032)  # 0: no limit


def test_a_zoom_scales_the_analysis_size_up_within_the_same_tile_limit():
    assert analysis_size(427, 640, 64, 0, zoom=2) == (854, 1280)
    assert analysis_size(20, 50, 64, 0, zoom=2) == (64, 160)  # the model input stays the floor
    assert analysis_size(1056, 1056, 64, 1024, zoom=2) == (1056, 1056)  # twice that would take 4x the tiles
    t, positions, covered = tiles(np.zeros((100, 150, 3), np.uint8), 64, zoom=2)
    assert covered.shape[:2] == (200, 300) and len(t) == len(positions) == tile_count(200, 300, 64)


def test_a_hostile_thin_image_costs_nothing_to_size():
    started = time.perf_counter()
    h, w = analysis_size(1, 5_000_000, 64, 1024)  # can only be scaled up: the caller refuses it
    assert (h, w) == (64, 320_000_000) and tile_count(h, w, 64) > 1024
    assert time.perf_counter() - started < 0.05


def laid_pixel_by_pixel(mask_logits, positions, size, covered):
    """The plain reading of assemble's rule, for comparison: every tile's cell probabilities on its pixels,
    averaged where tiles overlap, then averaged over each cell of the covered image."""
    h, w = covered
    cell = size // mask_logits.shape[-1]
    drop = 1 / (1 + np.exp(mask_logits[:, 0].astype(np.float64)))
    total, count = np.zeros((h, w)), np.zeros((h, w))
    for (y, x), d in zip(positions, drop, strict=False):
        total[y : y + size, x : x + size] += d.repeat(cell, 0).repeat(cell, 1)
        count[y : y + size, x : x + size] += 1
    per_pixel = total / count
    return np.array(
        [[per_pixel[r : r + cell, c : c + cell].mean() for c in range(0, w, cell)] for r in range(0, h, cell)]
    )


def test_the_mask_covers_the_whole_image_whatever_its_size():
    """The last tile along a side sits flush with the edge, mostly off the 16 px cell boundaries (x = 36 for
    100 px): its cells still land where its pixels are, and no edge cell is left out (reported as 0)."""
    rng = np.random.default_rng(0)
    sizes = [(64, 64), (100, 100), (70, 70), (520, 512), (65, 1000), (333, 71), (128, 192)]
    sizes += [(int(h), int(w)) for h, w in rng.integers(1, 400, size=(20, 2))]
    for h, w in sizes:
        t, positions, covered = tiles(np.zeros((h, w, 3), np.uint8), 64, 1024)
        logits = rng.normal(size=(len(t), 1, 4, 4)).astype(np.float32)
        _, cells = assemble(np.zeros(len(t)), logits, positions, 64, covered.shape[:2])
        assert cells.shape == tuple(-(-n // 16) for n in covered.shape[:2])
        np.testing.assert_allclose(cells, laid_pixel_by_pixel(logits, positions, 64, covered.shape[:2]), atol=1e-5)
        # the same drop everywhere: every cell and every heatmap pixel says so, edges included
        _, flat = assemble(
            np.zeros(len(t)), np.full((len(t), 1, 4, 4), -2.0, np.float32), positions, 64, covered.shape[:2]
        )
        values = heatmap(flat, 16, covered.shape[:2], w, h)
        assert values.shape == (h, w)
        np.testing.assert_allclose(flat, 1 / (1 + np.exp(-2.0)), rtol=1e-5)
        np.testing.assert_allclose(values, 1 / (1 + np.exp(-2.0)), rtol=1e-5)


def test_damage_seen_by_the_edge_tile_is_reported_at_the_edge():
    """100 x 100: tiles start at 0, 32 and 36 along each side. Only the last tile column sees damage, in its
    rightmost cells (pixels 84..99): the mask's last column and the heatmap's right edge say so, the left
    half of the image stays clean."""
    t, positions, covered = tiles(np.zeros((100, 100, 3), np.uint8), 64, 1024)
    logits = np.full((len(t), 1, 4, 4), 10.0, np.float32)  # drop probability ~0 everywhere
    for n, (_, x) in enumerate(positions):
        if x == 36:
            logits[n, 0, :, 3] = -10.0  # ~1 in the tile's last cell column: pixels 84..99
    _, cells = assemble(np.zeros(len(t)), logits, positions, 64, (100, 100))
    assert cells.shape == (7, 7)
    assert (cells[:, 6] > 0.99).all()  # pixels 96..99: only the edge tile covers them
    # 80..95: the tiles at 32 and 36 both cover it; 84..95 (12 of its 16 px) damaged for one of the two
    np.testing.assert_allclose(cells[:, 5], 12 / 16 * 0.5, atol=1e-3)
    assert (cells[:, :5] < 0.01).all()
    values = heatmap(cells, 16, (100, 100), 100, 100)
    np.testing.assert_allclose(values[:, 98:], cells[0, 6], rtol=1e-5)  # from the last cell's centre (98) on
    assert (values[:, 96:] > 0.9).all() and (values[:, :72] < 0.01).all()


def test_a_long_thin_image_costs_what_its_tiles_do():
    """2 x 1025 px (an 85-byte PNG) is tiled at 64 x 32800: 1024 tiles, at the limit. Its mask is assembled
    one side at a time at cell resolution: no matrix of the strip's 32800 pixels by its 4096 tile cells."""
    import tracemalloc

    t, positions, covered = tiles(np.zeros((2, 1025, 3), np.uint8), 64, 1024)
    assert len(t) == 1024 and covered.shape[:2] == (64, 32800)
    logits = np.random.default_rng(0).normal(size=(len(t), 1, 4, 4)).astype(np.float32)
    tracemalloc.start()
    _, cells = assemble(np.zeros(len(t)), logits, positions, 64, (64, 32800))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert cells.shape == (4, 2050) and np.isfinite(cells).all()
    assert peak < 16 * 2**20, peak  # a dense 32800 x 4096 matrix alone is 512 MiB
