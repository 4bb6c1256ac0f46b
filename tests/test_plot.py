"""Charts of long series: drawn from what the pixels can show, with every extreme kept."""

from __future__ import annotations

import math
import random

from fsmtrain.plot import Series, _envelope, chart, curves


class TestEnvelope:
    def test_a_short_series_is_drawn_as_it_is(self):
        pts = [(i, float(i % 7)) for i in range(1, 2001)]
        assert _envelope(pts, 600) == pts

    def test_a_long_series_keeps_its_ends_and_every_columns_extremes(self):
        """Thinned to at most four points a column, in order, with the global min and max and both ends."""
        rng = random.Random(0)
        pts = [(i, rng.gauss(0, 1)) for i in range(1, 100_001)]
        pts[77_776] = (77_777, -50.0)
        pts[1234] = (1235, 40.0)
        out = _envelope(pts, 500)
        assert len(out) <= 4 * 500 and out == sorted(out)
        assert out[0] == pts[0] and out[-1] == pts[-1]
        assert (77_777, -50.0) in out and (1235, 40.0) in out
        assert set(out) <= set(pts)


def test_a_million_point_curve_is_a_small_svg_whose_best_point_is_the_true_one():
    values = [1.0 / (1 + i) + 0.01 * math.sin(i) for i in range(1_000_000)]
    values[654_321] = -1.0
    svg = str(chart([Series("loss", values, 0)], best="min", width=640, height=300))
    assert len(svg) < 200_000
    assert 'data-index="654322"' in svg and 'data-value="-1.0"' in svg
    assert len(curves({"loss": values})) < 200_000
