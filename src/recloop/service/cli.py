"""``recloop serve``, ``recloop keys …`` and ``recloop model …``: running the service.

Each command reads the same settings as the service (``--home``, ``--db`` or the
``RECLOOP_*`` environment), so keys and model versions made here are the ones it serves.
"""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from recloop.errors import ConfigError
from recloop.service.settings import LOG_LEVELS

keys_app = typer.Typer(help="Create, list, rotate and revoke API keys.", no_args_is_help=True)
model_app = typer.Typer(
    help="Train, list and activate served model versions.", no_args_is_help=True
)
privacy_app = typer.Typer(
    help="Users' consent and owners, erasure, the audit log and retention purges.",
    no_args_is_help=True,
)

HomeOption = typer.Option(
    None, "--home", help="state folder (default: $RECLOOP_HOME or ./recloop-home)"
)
DbOption = typer.Option(None, "--db", help="event store URL (default: SQLite in the home folder)")
OPTION_OF = {  # settings field -> the option that sets it, for error messages
    "home": "--home",
    "db": "--db",
    "cache_url": "--cache",
    "rate_limit": "--rate-limit",
    "log_level": "--log-level",
}


def _settings(home: Path | None, db: str | None, **more: Any) -> Any:
    """The service's settings (``RECLOOP_*``) with the options given on top; a bad option is
    an error naming it."""
    from pydantic import ValidationError

    from recloop.service.settings import ServiceSettings

    base = ServiceSettings.from_env().model_dump()
    overrides = {"home": home, "db": db, **more}
    base.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return ServiceSettings.model_validate(base)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = str(err["loc"][0]) if err["loc"] else "settings"
        raise ConfigError(f"{OPTION_OF.get(field, field)}: {err['msg']}") from None


def _store(settings: Any, *, create: bool = False) -> Any:
    """The event store. Only ``serve`` and ``keys create`` (``create=True``) may start a new
    home; for every other command a mistyped --home or --db is an error, never a new, empty
    home and database."""
    from recloop.store.events import EventStore

    if create:
        from recloop.cli import check_writable

        check_writable(settings.home, "--home", folder=True)
        settings.home.mkdir(parents=True, exist_ok=True)
    else:
        _require_store(settings)
    return EventStore(settings.db_url)


def _require_home(settings: Any) -> None:
    """The home folder must exist already (the commands that only read it or change it)."""
    home = settings.home
    if not home.is_dir():
        what = "not a folder" if home.exists() else "no such folder"
        raise ConfigError(
            f"--home {home}: {what}; give the home `recloop serve` uses (or set RECLOOP_HOME)"
        )


def _require_store(settings: Any) -> None:
    """The event store must exist already: its home, and for SQLite its database file."""
    if settings.db is None:
        _require_home(settings)
    path = _sqlite_file(settings.db_url)
    if path is not None and not path.is_file():
        where = f"--db {settings.db}" if settings.db else f"--home {settings.home}"
        raise ConfigError(
            f"{where}: no event store at {path}; give the one `recloop serve` uses (or set "
            "RECLOOP_HOME / RECLOOP_DB)"
        )


def _sqlite_file(url: str) -> Path | None:
    """The database file of a SQLite store URL or plain path (None for other stores)."""
    if "://" not in url:
        return Path(url).expanduser()
    if not url.startswith("sqlite"):
        return None
    import sqlalchemy

    try:
        database = sqlalchemy.make_url(url).database
    except sqlalchemy.exc.ArgumentError:
        return None  # the store reports the bad URL itself
    return Path(database).expanduser() if database and database != ":memory:" else None


def create_key(store: Any, name: str, role: str, owner: str | None = None) -> tuple[str, str]:
    """A new key stored by its hash; returns ``(key_id, secret)`` (the secret is shown once).

    ``owner`` is the client application the key acts for (default: ``name``): keys with the
    same owner read and write the same users."""
    from recloop.service.auth import new_key
    from recloop.store.events import KeyRecord

    _check_key_fields(role, owner)
    key_id, secret, key_hash = new_key()
    store.add_key(KeyRecord(key_id, name, role, key_hash, time.time(), owner=owner or name))
    return key_id, secret


def _check_key_fields(role: str, owner: str | None) -> None:
    from recloop.service.auth import ROLES

    if role not in ROLES:
        raise ConfigError(f"role must be one of {', '.join(ROLES)}, not {role!r}")
    if owner is not None and not owner.strip():
        raise ConfigError("--owner must be a non-empty client application name")


def register(app: typer.Typer, console: Any, user_errors: Any) -> None:
    """Add the service commands to the main CLI."""
    app.add_typer(keys_app, name="keys")
    app.add_typer(model_app, name="model")
    app.add_typer(privacy_app, name="privacy")
    _register_privacy(console, user_errors)

    @app.command()
    @user_errors
    def serve(
        home: Path | None = HomeOption,
        db: str | None = DbOption,
        cache: str | None = typer.Option(
            None, "--cache", help="cache URL, e.g. redis://127.0.0.1:6379/0 (default: in-process)"
        ),
        host: str = typer.Option("127.0.0.1", help="address to listen on"),
        port: int = typer.Option(8000, min=1, max=65535, help="port to listen on"),
        workers: int = typer.Option(1, min=1, help="worker processes"),
        model: str = typer.Option(
            "EASE", help="model to train on first start, when no version is active"
        ),
        rate_limit: float | None = typer.Option(
            None, help="requests/s per key and worker (0: unlimited; default 5000)"
        ),
        log_level: str = typer.Option("INFO", help=f"JSON log level: {', '.join(LOG_LEVELS)}"),
    ) -> None:
        """Run the HTTP service (SQLite and an in-process cache unless told otherwise).

        On first start it imports MovieLens-100K (or synthetic data, with a notice), trains
        ``--model`` on it, activates that version and prints an admin key once.
        """
        import uvicorn

        from recloop.models.registry import model_class

        model_class(model)  # every option is checked before any data is imported
        settings = _settings(home, db, cache_url=cache, rate_limit=rate_limit, log_level=log_level)
        store = _store(settings, create=True)
        try:
            _first_start(settings, store, model, console)
        finally:
            store.close()
        os.environ.update(settings.to_env())
        console.print(f"serving on http://{host}:{port} (OpenAPI: /docs, /openapi.json)")
        uvicorn.run(
            "recloop.service.app:app_from_env",
            factory=True,
            host=host,
            port=port,
            workers=workers,
            log_config=None,
            access_log=False,
        )

    @keys_app.command("create")
    @user_errors
    def keys_create(
        name: str = typer.Option(..., "--name", help="who or what the key is for"),
        role: str = typer.Option("client", "--role", help="client or admin"),
        owner: str | None = typer.Option(
            None,
            "--owner",
            help="the client application it acts for (default: --name); keys with the same "
            "owner share their users",
        ),
        home: Path | None = HomeOption,
        db: str | None = DbOption,
    ) -> None:
        """Create a key and print its secret (shown only this once; only its hash is kept)."""
        if not name.strip():
            raise ConfigError("--name must be a non-empty name")
        _check_key_fields(role, owner)  # before a new home is made for it
        store = _store(_settings(home, db), create=True)
        try:
            key_id, secret = create_key(store, name, role, owner)
        finally:
            store.close()
        console.print(f"key {key_id} ({role}, {name}, owner {owner or name}):")
        typer.echo(secret)

    @keys_app.command("list")
    @user_errors
    def keys_list(home: Path | None = HomeOption, db: str | None = DbOption) -> None:
        """Every key: id, name, role, owner, created, revoked (never the secret)."""
        store = _store(_settings(home, db))
        try:
            keys = store.list_keys()
        finally:
            store.close()
        table = Table("key id", "name", "role", "owner", "created", "revoked")
        for key in keys:
            table.add_row(
                key.key_id,
                key.name,
                key.role,
                key.owner,
                _when(key.created_at),
                _when(key.revoked_at),
            )
        console.print(table)

    @keys_app.command("revoke")
    @user_errors
    def keys_revoke(
        key_id: str = typer.Argument(..., help="the key's id (from `recloop keys list`)"),
        home: Path | None = HomeOption,
        db: str | None = DbOption,
    ) -> None:
        """Revoke a key: every worker refuses it within the key cache time (5 s)."""
        store = _store(_settings(home, db))
        try:
            store.revoke_key(key_id, time.time())
        finally:
            store.close()
        console.print(f"key {key_id} revoked")

    @keys_app.command("rotate")
    @user_errors
    def keys_rotate(
        key_id: str = typer.Argument(..., help="the key to replace"),
        home: Path | None = HomeOption,
        db: str | None = DbOption,
    ) -> None:
        """Replace a key by a new one with the same name, role and owner; revoke the old one.

        The new key acts for the same client application, so for the same users."""
        store = _store(_settings(home, db))
        try:
            old = next((k for k in store.list_keys() if k.key_id == key_id), None)
            if old is None or old.revoked_at is not None:
                raise ConfigError(f"no active key {key_id!r} (see `recloop keys list`)")
            new_id, secret = create_key(store, old.name, old.role, old.owner)
            store.revoke_key(key_id, time.time())
        finally:
            store.close()
        console.print(f"key {key_id} revoked; new key {new_id} ({old.role}, {old.name}):")
        typer.echo(secret)

    @model_app.command("train")
    @user_errors
    def model_train(
        name: str = typer.Argument("EASE", help="model class name, e.g. EASE or SASRec"),
        config: Path | None = typer.Option(
            None, "--config", "-c", help="run config TOML whose \\[model.config] table to use"
        ),
        max_epochs: int | None = typer.Option(None, help="cap on training epochs (neural)"),
        activate: bool = typer.Option(True, help="activate the new version"),
        home: Path | None = HomeOption,
        db: str | None = DbOption,
    ) -> None:
        """Train a new version on every event in the store and register it."""
        from recloop.service.bootstrap import train_version
        from recloop.store.artifacts import ArtifactRegistry

        settings = _settings(home, db)
        params = _model_params(name, config)
        if max_epochs is not None:
            params["max_epochs"] = max_epochs
        store = _store(settings)  # an existing one: a new, empty store has nothing to train on
        try:
            with console.status(f"training {name} on the stored events"):
                version = train_version(
                    store, ArtifactRegistry(settings.models_dir), name, params, activate=activate
                )
        finally:
            store.close()
        console.print(f"registered {name} as {version}" + (" (active)" if activate else ""))

    @model_app.command("list")
    @user_errors
    def model_list(home: Path | None = HomeOption) -> None:
        """Registered versions, the active one marked."""
        from recloop.store.artifacts import ArtifactRegistry

        settings = _settings(home, None)
        _require_home(settings)
        registry = ArtifactRegistry(settings.models_dir)
        active = registry.active()
        table = Table("version", "model", "created", "items", "users", "active")
        for v in registry.versions():
            table.add_row(
                v.version,
                v.model,
                _when(v.created_at),
                str(v.n_items),
                str(v.n_users),
                "*" if v.version == active else "",
            )
        console.print(table)

    @model_app.command("activate")
    @user_errors
    def model_activate(
        version: str = typer.Argument(..., help="e.g. v0002"), home: Path | None = HomeOption
    ) -> None:
        """Activate a version; running workers switch to it within a second."""
        from recloop.store.artifacts import ArtifactRegistry

        settings = _settings(home, None)
        _require_home(settings)
        registry = ArtifactRegistry(settings.models_dir)
        registry.info(version)
        registry.activate(version)
        console.print(f"{version} is active")

    @model_app.command("rollback")
    @user_errors
    def model_rollback(home: Path | None = HomeOption) -> None:
        """Re-activate the version that was active before the current one."""
        from recloop.store.artifacts import ArtifactRegistry

        settings = _settings(home, None)
        _require_home(settings)
        version = ArtifactRegistry(settings.models_dir).rollback()
        console.print(f"rolled back: {version} is active")

    @model_app.command("prices")
    @user_errors
    def model_prices(
        version: str | None = typer.Argument(None, help="e.g. v0002 (default: the active one)"),
        strength: float = typer.Option(
            3.0, min=0.0, help="exposure price in z-units: higher spreads impressions more"
        ),
        candidates: int = typer.Option(
            100, min=1, max=1000, help="model candidates per user the prices choose among"
        ),
        k: int = typer.Option(10, min=1, help="list length the batch is fitted for"),
        max_users: int = typer.Option(
            5000, min=1, help="stored users the prices are fitted on (a seeded sample beyond)"
        ),
        seed: int = typer.Option(0, min=0, help="seed of the user sample"),
        clear: bool = typer.Option(False, "--clear", help="remove the version's prices"),
        home: Path | None = HomeOption,
        db: str | None = DbOption,
    ) -> None:
        """Fit exposure prices for a version: the service re-ranks with them to spread exposure.

        Every worker then re-ranks the version's candidates to spread impressions
        (docs/fairness.md, "In the service"); refit when the data drifts."""
        from recloop.service.prices import clear_prices, fit_prices
        from recloop.store.artifacts import ArtifactRegistry

        settings = _settings(home, db)
        _require_store(settings)
        registry = ArtifactRegistry(settings.models_dir)
        chosen = version or registry.active()
        if chosen is None:
            raise ConfigError("no version is active; name one (recloop model list)")
        registry.info(chosen)  # an unknown version fails with the known ones listed
        if clear:
            found = clear_prices(settings.prices_dir, chosen)
            console.print(f"{chosen}: exposure prices removed" if found else f"{chosen}: none")
            return
        if candidates > settings.candidates:
            raise ConfigError(
                f"--candidates {candidates} exceeds the {settings.candidates} candidates the "
                "service caches per user (RECLOOP_CANDIDATES)"
            )
        store = _store(settings)
        try:
            with console.status(f"fitting exposure prices for {chosen}"):
                manifest = fit_prices(
                    store, registry, settings.prices_dir, chosen, strength,
                    candidates=candidates, k=k, max_users=max_users, seed=seed,
                )  # fmt: skip
        finally:
            store.close()
        console.print(
            f"{chosen}: exposure prices fitted on {manifest['users']} users in "
            f"{manifest['seconds']:.1f} s; Gini@{k} of their lists "
            f"{manifest['gini_before']:.3f} → {manifest['gini_after']:.3f}"
        )


def _register_privacy(console: Any, user_errors: Any) -> None:
    """``recloop privacy consent|owner|erase|audit|purge`` (the same code as the service's
    routes)."""

    @privacy_app.command("consent")
    @user_errors
    def privacy_consent(
        user: str = typer.Argument(..., help="the user's id"),
        personalisation: bool | None = typer.Option(None, "--personalisation/--no-personalisation"),
        training: bool | None = typer.Option(None, "--training/--no-training"),
        generative: bool | None = typer.Option(None, "--generative/--no-generative"),
        home: Path | None = HomeOption,
        db: str | None = DbOption,
    ) -> None:
        """Show a user's consent, or change the flags given (the others are kept)."""
        from dataclasses import asdict, replace

        from recloop.service.privacy import ConsentReader
        from recloop.store.cache import open_cache
        from recloop.store.privacy import PrivacyLog

        settings = _settings(home, db)
        store = _store(settings)
        try:
            log = PrivacyLog(store)
            now = log.consent(user)
            changes = {
                name: value
                for name, value in (
                    ("personalisation", personalisation),
                    ("training", training),
                    ("generative", generative),
                )
                if value is not None
            }
            if changes:
                cache = open_cache(
                    settings.cache_url,
                    namespace=settings.cache_namespace,
                    generation_file=settings.generation_file,
                )
                try:  # through the cache, so running workers see the change at once
                    ConsentReader(log, cache).set(user, replace(now, **changes), "cli")
                finally:
                    cache.close()
                now = log.consent(user)
            console.print_json(data={"user_id": user, **asdict(now)})
        finally:
            store.close()

    @privacy_app.command("owner")
    @user_errors
    def privacy_owner(
        user: str = typer.Argument(..., help="the user's id"),
        set_to: str | None = typer.Option(
            None, "--set", help="give the user to this client application (a key's owner)"
        ),
        release: bool = typer.Option(
            False, "--release", help="release the user: the next client to write claims them"
        ),
        home: Path | None = HomeOption,
        db: str | None = DbOption,
    ) -> None:
        """Show which client application acts for a user, or reassign or release them."""
        from dataclasses import asdict

        from recloop.store.cache import open_cache
        from recloop.store.privacy import PrivacyLog

        if set_to is not None and release:
            raise ConfigError("give either --set OWNER or --release, not both")
        settings = _settings(home, db)
        store = _store(settings)
        try:
            log = PrivacyLog(store)
            if set_to is not None or release:
                owners = {k.owner for k in store.list_keys() if k.revoked_at is None}
                if set_to is not None and set_to not in owners:
                    console.print(f"note: no active key acts for {set_to!r} yet")
                log.set_owner(user, set_to, "cli")
                cache = open_cache(
                    settings.cache_url,
                    namespace=settings.cache_namespace,
                    generation_file=settings.generation_file,
                )
                try:  # running workers drop their ownership caches at once
                    cache.invalidate()
                finally:
                    cache.close()
            now = log.owner(user)
            shown = asdict(now) if now else {"user_id": user, "owner": None, "claimed_at": None}
            console.print_json(data=shown)
        finally:
            store.close()

    @privacy_app.command("erase")
    @user_errors
    def privacy_erase(
        user: str = typer.Argument(..., help="the user's id"),
        yes: bool = typer.Option(False, "--yes", help="do not ask for confirmation"),
        home: Path | None = HomeOption,
        db: str | None = DbOption,
    ) -> None:
        """Erase a user everywhere, as DELETE /v1/users/{id} does (store, caches, models)."""
        from recloop.service.privacy import erase
        from recloop.service.state import ServiceState

        settings = _settings(home, db)
        _require_store(settings)
        if not yes and not typer.confirm(f"erase every trace of user {user!r}?"):
            raise typer.Exit(1)
        state = ServiceState.open(settings)
        try:
            report = erase(state, user, "cli")
        finally:
            state.close()
        console.print_json(report.model_dump_json())

    @privacy_app.command("audit")
    @user_errors
    def privacy_audit(
        subject: str | None = typer.Option(None, help="only this user's entries"),
        limit: int = typer.Option(50, min=1, help="newest entries to show"),
        home: Path | None = HomeOption,
        db: str | None = DbOption,
    ) -> None:
        """The privacy audit log, newest first."""
        from recloop.store.privacy import PrivacyLog

        store = _store(_settings(home, db))
        try:
            entries = PrivacyLog(store).audit(subject=subject, limit=limit)
        finally:
            store.close()
        table = Table("seq", "when", "actor", "action", "subject", "detail")
        for e in entries:
            table.add_row(str(e.seq), _when(e.at), e.actor, e.action, e.subject, str(e.detail))
        console.print(table)

    @privacy_app.command("purge")
    @user_errors
    def privacy_purge(home: Path | None = HomeOption, db: str | None = DbOption) -> None:
        """Delete events past their kind's retention and slates past theirs, now."""
        from recloop.store.privacy import PrivacyLog

        settings = _settings(home, db)
        store = _store(settings)
        try:
            removed = PrivacyLog(store).purge_expired(
                settings.retention_s, settings.slate_retention_days * 86400.0, time.time()
            )
        finally:
            store.close()
        console.print_json(data=removed)


def _model_params(name: str, config: Path | None) -> dict[str, Any]:
    from recloop.runconfig import load_run_config

    if config is None:
        return {}
    run = load_run_config(config)
    if run.model.name != name:
        raise ConfigError(f"{config} configures {run.model.name}, not {name}")
    return dict(run.model.config)


def _when(seconds: float | None) -> str:
    if seconds is None:
        return ""
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _first_start(settings: Any, store: Any, model: str, console: Any) -> None:
    """On an empty home: import data, train and activate ``model``, print an admin key."""
    from recloop.cli import movielens_or_synthetic, tuned_config
    from recloop.service.bootstrap import import_dataset, train_version
    from recloop.store.artifacts import ArtifactRegistry

    registry = ArtifactRegistry(settings.models_dir)
    if registry.active() is None:
        if store.count_events() == 0:
            dataset, name = movielens_or_synthetic()
            with console.status(f"importing {name} into the event store"):
                stored = import_dataset(store, dataset, source=name)
            console.print(f"imported {stored:,} events of {name}")
        protocol = "loo" if model in ("SASRec", "SIDSASRec", "TIGER") else "ratio"
        params = tuned_config("ml-100k", protocol, model) or {}
        with console.status(f"training {model} on the stored events"):
            version = train_version(store, registry, model, params)
        console.print(f"trained {model}: version {version} is active")
    if not store.list_keys():
        key_id, secret = create_key(store, "first admin", "admin")
        console.print(
            f"[bold]First start: admin key {key_id}[/] (shown once; keep it, or make others "
            "with `recloop keys create`):"
        )
        typer.echo(secret)
