"""Run configuration files (TOML): what ``recloop train``, ``evaluate`` and ``tune`` read.

```toml
[data]
dataset = "ml-100k"      # ml-100k, ml-1m, synthetic or files (with path = "...")
protocol = "ratio"

[model]
name = "EASE"
[model.config]
l2 = 500.0

[run]
seeds = [0, 1, 2]
ks = [10, 20]
out = "runs/ease"
```
"""

from __future__ import annotations

import math
import tomllib
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError, field_validator
from pydantic_core import PydanticCustomError

from recloop.errors import ConfigError
from recloop.experiment import DataConfig


class ModelSpec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    config: dict[str, Any] = Field(default_factory=dict)


class RunSettings(BaseModel):
    """Which seeds to run, the cut-offs to evaluate at and where the models go."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    seeds: list[Annotated[StrictInt, Field(ge=0)]] = Field(
        default_factory=lambda: [0], min_length=1, description="split and model seeds, each once"
    )
    ks: list[Annotated[StrictInt, Field(ge=1)]] = Field(
        default_factory=lambda: [10, 20], min_length=1, description="cut-offs, each once"
    )
    out: Path = Path("runs/default")

    @field_validator("seeds", "ks")
    @classmethod
    def _each_once(cls, values: list[int]) -> list[int]:
        repeated = sorted({v for v in values if values.count(v) > 1})
        if repeated:
            raise PydanticCustomError(
                "repeated", "{value} is listed more than once", {"value": repeated[0]}
            )
        return values


class TuningRecord(BaseModel):
    """Provenance written by ``recloop tune``: how the model's config was chosen."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    trials: int
    metric: str
    best_valid: float
    seed: int = 0
    space: str = ""
    trials_file: str = ""


class RunConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    data: DataConfig = DataConfig()
    model: ModelSpec
    run: RunSettings = RunSettings()
    tuning: TuningRecord | None = None


def _validation_message(path: Path, exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"])
    return f"{path}: field '{where}': {err['msg']}"


def read_toml(path: Path) -> dict[str, Any]:
    """A TOML file as a dict; a missing, unreadable, non-UTF-8 or invalid file is a
    :class:`ConfigError` naming it."""
    try:
        with Path(path).open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a folder, not a TOML file") from None
    except UnicodeDecodeError as exc:
        line = exc.object[: exc.start].count(b"\n") + 1
        raise ConfigError(
            f"{path}:{line}: not UTF-8 text (byte {exc.object[exc.start]:#04x}); TOML files "
            "must be UTF-8"
        ) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML ({exc})") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read it ({exc.strerror or exc})") from None


def load_run_config(path: Path) -> RunConfig:
    """Read and validate a run config; errors name the file and the field."""
    raw = read_toml(path)
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_validation_message(Path(path), exc)) from None


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            raise ConfigError(f"cannot write {value} to TOML")
        return repr(value)
    if isinstance(value, str | Path):
        text = str(value).replace("\\", "\\\\").replace('"', '\\"')
        return f'"{text}"'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    raise ConfigError(f"cannot write a {type(value).__name__} to TOML")


def to_toml(data: dict[str, Any], header: str = "") -> str:
    """A small TOML writer for configs: scalars, lists and nested tables."""
    lines = [f"# {line}" if line else "#" for line in header.splitlines()]

    def table(prefix: str, mapping: dict[str, Any]) -> None:
        scalars = {k: v for k, v in mapping.items() if not isinstance(v, dict) and v is not None}
        nested = {k: v for k, v in mapping.items() if isinstance(v, dict)}
        if prefix and (scalars or not nested):
            lines.append(f"\n[{prefix}]")
        for key, value in scalars.items():
            lines.append(f"{key} = {_value(value)}")
        for key, value in nested.items():
            table(f"{prefix}.{key}" if prefix else key, value)

    table("", data)
    return "\n".join(lines).strip() + "\n"


def write_run_config(path: Path, config: RunConfig, header: str = "") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(to_toml(config.model_dump(mode="json"), header))
