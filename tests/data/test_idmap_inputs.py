"""IdMap takes any iterable, and a refused ``add`` leaves the map exactly as it was."""

from __future__ import annotations

import numpy as np
import pytest

from recloop.data import IdMap
from recloop.errors import DataError, UnknownIdError


def test_index_of_a_generator_names_the_unknown_id() -> None:
    ids = IdMap(["a", "b"])
    with pytest.raises(UnknownIdError, match="unknown id 'zz'"):
        ids.index(x for x in ["a", "zz"])
    assert ids.index(x for x in ["b", "a"]).tolist() == [1, 0]
    assert ids.index((x for x in ["b", "zz"]), unknown="new").tolist() == [1, -1]
    with pytest.raises(UnknownIdError, match="unknown id 'q'"):
        ids.index(iter({"q": 1}))
    with pytest.raises(UnknownIdError, match="unknown id '7'"):
        ids.index(np.array([7]))
    assert ids.index(x for x in []).tolist() == []


@pytest.mark.parametrize("new", [["b", "a"], ["b", "c", "b"], (x for x in ["b", "a"])])
def test_refused_add_changes_nothing(new: object) -> None:
    ids = IdMap(["a"])
    with pytest.raises(DataError, match=r"duplicate id '(a|b)'"):
        ids.add(new, allow_existing=False)  # type: ignore[arg-type]
    assert ids.ids() == ["a"] and "b" not in ids and len(ids) == 1
    assert ids.add(["b"], allow_existing=False).tolist() == [1]


def test_add_of_a_generator() -> None:
    ids = IdMap(["a"])
    assert ids.add(x for x in ["b", "a", "b"]).tolist() == [1, 0, 1]
    assert ids.ids() == ["a", "b"]
