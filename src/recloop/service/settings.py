"""The service's settings: one frozen model, filled from ``RECLOOP_*`` environment variables.

``recloop serve`` writes its options into the environment before uvicorn starts the workers,
so every worker process builds the same settings with :meth:`ServiceSettings.from_env`.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_core import PydanticCustomError

from recloop.errors import ConfigError

ENV_PREFIX = "RECLOOP_"
LOG_LEVELS = ("CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG")
CACHE_SCHEMES = ("redis", "rediss")  # besides "memory" (or no URL): the in-process cache


class ServiceSettings(BaseModel):
    """Where the service keeps its state and how hard it lets clients push."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    home: Path = Field(
        default=Path("recloop-home"),
        description="State folder: the SQLite file, model versions, the cache generation file.",
    )
    db: str | None = Field(
        default=None, description="Event store URL; default: sqlite:///<home>/recloop.db."
    )
    cache_url: str | None = Field(
        default=None, description="Cache URL (redis://...); default: in-process."
    )
    cache_namespace: str = Field(
        default="recloop", min_length=1, description="Prefix of this service's keys in Redis."
    )
    # The default sits above what one worker serves (about 1-2k requests/s on one core), so
    # a single busy client key (an app's backend) is never throttled below capacity; lower it
    # per deployment to protect against runaway clients.
    rate_limit: float = Field(
        default=5000.0, ge=0.0, description="Requests per second per key and worker (0: none)."
    )
    rate_burst: int = Field(default=5000, ge=1, description="Requests a key may send at once.")
    max_body_bytes: int = Field(default=16 * 1024 * 1024, ge=1024, description="Largest body.")
    candidates: int = Field(
        default=100, ge=1, le=1000, description="Candidates kept per user in the cache."
    )
    candidate_cache: bool = Field(
        default=True, description="Cache each user's candidates until their history changes."
    )
    torch_threads: int = Field(
        default=1, ge=1, description="Threads each worker's model may use (workers share cores)."
    )
    log_level: str = Field(default="INFO", description="Log level of the JSON logs.")
    key_cache_s: float = Field(
        default=5.0, ge=0.0, description="How long a worker trusts a key lookup (revocation lag)."
    )
    owner_refresh_s: float = Field(
        default=0.5,
        ge=0.0,
        description="How often a worker reads new user claims into its ownership mirror (a "
        "client's claim in another worker reaches it within this; reassignments reach every "
        "worker at once).",
    )
    model_check_s: float = Field(
        default=1.0,
        gt=0.0,
        description="How often a worker looks for a newly activated model and for newly "
        "fitted or cleared exposure prices.",
    )
    loop: bool = Field(
        default=True,
        description="Blend the candidate sources with bandit-chosen weights (off: the model's "
        "order). Slates are logged either way.",
    )
    loop_config: Path | None = Field(
        default=None, description="JSON file with the loop's arms, segments and windows."
    )
    loop_update_s: float = Field(
        default=30.0, ge=0.0, description="How often a worker relearns the bandit (0: never)."
    )
    retrain_every_s: float = Field(
        default=0.0, ge=0.0, description="Retrain when the last run is this old (0: never)."
    )
    retrain_min_events: int = Field(
        default=0, ge=0, description="Retrain after this many new events (0: never)."
    )
    retrain_model: str | None = Field(
        default=None, description="Model class to retrain (default: the active version's)."
    )
    erasure_rebuild_s: float = Field(
        default=600.0,
        gt=0.0,
        description="Models are rebuilt without an erased user within this time (the loop "
        "updater retrains at its next run after an erasure).",
    )
    allowed_context_keys: str = Field(
        default="surface,device,page,locale",
        description="Event context keys that are stored (comma-separated; others are dropped "
        "and counted); '*' keeps every key.",
    )
    allowed_user_attributes: str = Field(
        default="age,gender,occupation",
        description="User attributes that are stored (comma-separated); '*' keeps all.",
    )
    retention_days: str = Field(
        default="",
        description="Days events of each kind are kept, e.g. 'view=90,click=365' (others: "
        "forever); the loop updater purges older ones.",
    )
    slate_retention_days: float = Field(
        default=30.0, gt=0.0, description="Days logged slates and impressions are kept."
    )
    slate_flush_s: float = Field(
        default=0.2, gt=0.0, description="How often logged slates are written, in batches."
    )

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, level: str) -> str:
        if level.strip().upper() not in LOG_LEVELS:
            raise PydanticCustomError(
                "log_level",
                "log level must be one of {levels}, not {level}",
                {"levels": ", ".join(LOG_LEVELS), "level": repr(level)},
            )
        return level.strip().upper()

    @field_validator("cache_url")
    @classmethod
    def _known_cache(cls, url: str | None) -> str | None:
        """Checked here, so a bad URL fails before the service starts, not in each worker."""
        if url is None or url.strip() in ("", "memory"):
            return url
        try:
            scheme = urlsplit(url).scheme
        except ValueError:
            scheme = ""
        if scheme not in CACHE_SCHEMES:
            from recloop.store.cache import mask_url

            raise PydanticCustomError(
                "cache_url",
                "unknown cache URL {url}: use 'memory', redis:// or rediss://",
                {"url": repr(mask_url(url))},
            )
        return url

    @property
    def context_allow_list(self) -> frozenset[str] | None:
        return _allow_list(self.allowed_context_keys)

    @property
    def user_attribute_allow_list(self) -> frozenset[str] | None:
        return _allow_list(self.allowed_user_attributes)

    @property
    def retention_s(self) -> dict[str, float]:
        """Seconds to keep each event kind (lower-case kind names)."""
        out: dict[str, float] = {}
        for part in filter(None, (p.strip() for p in self.retention_days.split(","))):
            kind, _, days = part.partition("=")
            try:
                out[kind.strip().lower()] = float(days) * 86400.0
            except ValueError:
                raise ConfigError(f"RECLOOP_RETENTION_DAYS: {part!r} is not kind=days") from None
        return out

    @property
    def db_url(self) -> str:
        return self.db or f"sqlite:///{(self.home / 'recloop.db').resolve()}"

    @property
    def models_dir(self) -> Path:
        return self.home / "models"

    @property
    def prices_dir(self) -> Path:
        """Fitted exposure prices per model version (``recloop model prices``)."""
        return self.home / "exposure_prices"

    @property
    def generation_file(self) -> Path:
        return self.home / "cache-generation"

    @classmethod
    def from_env(cls) -> ServiceSettings:
        """Settings from ``RECLOOP_HOME``, ``RECLOOP_DB``, ``RECLOOP_CACHE_URL``, … variables."""
        values = {
            name: os.environ[f"{ENV_PREFIX}{name.upper()}"]
            for name in cls.model_fields
            if f"{ENV_PREFIX}{name.upper()}" in os.environ
        }
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            err = exc.errors()[0]
            name = f"{ENV_PREFIX}{str(err['loc'][0]).upper()}" if err["loc"] else "settings"
            raise ConfigError(f"{name}: {err['msg']}") from None

    def to_env(self) -> dict[str, str]:
        """The environment that makes :meth:`from_env` rebuild these settings."""
        out = {}
        for name, value in self.model_dump().items():
            if value is not None:
                out[f"{ENV_PREFIX}{name.upper()}"] = str(value)
        return out


def _allow_list(text: str) -> frozenset[str] | None:
    if text.strip() == "*":
        return None
    return frozenset(p.strip() for p in text.split(",") if p.strip())
