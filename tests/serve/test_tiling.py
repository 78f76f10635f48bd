"""How /spot covers an image with tiles: counted without listing them, and a large image's analysis size is
the largest within SPOT_MAX_TILES, aspect kept (the route's tests send real photos; these sweep sizes)."""

import random
import time

import pytest

from service.preprocess import analysis_size, tile_count, tile_positions, tiles_along


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


def test_a_hostile_thin_image_costs_nothing_to_size():
    started = time.perf_counter()
    h, w = analysis_size(1, 5_000_000, 64, 1024)  # can only be scaled up: the caller refuses it
    assert (h, w) == (64, 320_000_000) and tile_count(h, w, 64) > 1024
    assert time.perf_counter() - started < 0.05
