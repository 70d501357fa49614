"""Share parameters are checked before any split is cut: a bad share is a clear ConfigError."""

from __future__ import annotations

import math

import numpy as np
import pytest

from recloop.data import Interactions, make_split, temporal
from recloop.errors import ConfigError


def _log() -> Interactions:
    n = np.arange(100)
    return Interactions.from_arrays(n % 10, n % 7, n)


@pytest.mark.parametrize("protocol", ["temporal", "ratio"])
@pytest.mark.parametrize(
    "shares",
    [
        {"test_share": 1.5},
        {"test_share": 0.0},
        {"test_share": -0.1},
        {"valid_share": -0.1},
        {"valid_share": 1.0},
        {"valid_share": 0.95, "test_share": 0.1},
        {"valid_share": 0.5, "test_share": 0.6},
        {"valid_share": 0.5, "test_share": 0.5},
        {"test_share": math.nan},
    ],
)
def test_bad_shares_are_refused(protocol: str, shares: dict[str, float]) -> None:
    with pytest.raises(ConfigError, match=f"{protocol} split needs 0 <= valid_share") as info:
        make_split(_log(), protocol, **shares)
    assert "got valid_share=" in str(info.value) and "\n" not in str(info.value)


def test_temporal_shares_at_the_edges_still_split() -> None:
    split = temporal(_log(), valid_share=0.0, test_share=0.5)
    assert (len(split.train), len(split.valid), len(split.test)) == (50, 0, 50)
    split = temporal(_log(), valid_share=0.45, test_share=0.45)
    assert (len(split.train), len(split.valid), len(split.test)) == (10, 45, 45)
