"""recloop: generative recommendation with honest benchmarks and a feedback loop."""

from recloop.data import (
    Catalog,
    Dataset,
    EventKind,
    Exclusions,
    IdMap,
    Interactions,
    Queries,
    Split,
    Users,
    make_split,
)
from recloop.errors import ConfigError, DataError, RecloopError

__version__ = "0.1.0"

__all__ = [
    "Catalog",
    "ConfigError",
    "DataError",
    "Dataset",
    "EventKind",
    "Exclusions",
    "IdMap",
    "Interactions",
    "Queries",
    "RecloopError",
    "Split",
    "Users",
    "__version__",
    "make_split",
]
