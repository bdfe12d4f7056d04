"""bench.http's ratio per round: the runs made side by side, paired in order."""

from __future__ import annotations

import pytest

from bench.http import rounds


def test_rounds_pairs_runs_in_order_and_gives_median_and_range() -> None:
    # round 1: 2.0, round 2: 1.0, round 3: 1.5 (paired by position, not sorted first)
    assert rounds([4.0, 1.0, 3.0], [2.0, 1.0, 2.0]) == "1.50 (1.00-2.00)"


def test_rounds_skips_a_zero_baseline_and_says_when_nothing_is_left() -> None:
    assert rounds([4.0, 3.0], [0.0, 2.0]) == "1.50 (1.50-1.50)"
    assert rounds([4.0], [0.0]) == "-"


def test_rounds_refuses_unpaired_runs() -> None:
    with pytest.raises(ValueError):
        rounds([1.0, 2.0], [1.0])
