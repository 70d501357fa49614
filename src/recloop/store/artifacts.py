"""The model artifact registry: versioned model directories, an active pointer, rollback.

Layout under the root folder::

    versions/<version>/manifest.json   version, model class, created_at, sizes, metadata
    versions/<version>/model/          what the model's own ``save`` wrote
    versions/<version>/ids.json        external item and user ids in index order
    ACTIVE                             the active version's name, replaced atomically
    history.jsonl                      one line per activation (rollbacks flagged)

A version appears only by renaming a complete staging folder into ``versions/``, so a crash
never leaves a half-written version; several processes (service workers, a trainer) may share
one root. Nothing is pickled: manifests and ids are JSON, weights are safetensors.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import shutil
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safetensors import SafetensorError

from recloop.data.types import IdMap
from recloop.errors import RecloopError

MANIFEST = "manifest.json"
IDS = "ids.json"
MODEL_DIR = "model"
ACTIVE = "ACTIVE"
HISTORY = "history.jsonl"
VERSIONS = "versions"
LOCK = ".lock"
STAGING_PREFIX = ".tmp-"
STALE_STAGING_S = 24 * 3600.0
"""Staging folders older than this are left over from a crashed ``register`` and removed."""

_VERSION_RE = re.compile(r"^v(\d+)$")


class ArtifactError(RecloopError):
    """A missing, unknown or corrupt model version, or an invalid registration."""


@dataclass(frozen=True)
class VersionInfo:
    """What a version's manifest says about it."""

    version: str
    model: str
    created_at: float
    n_items: int
    n_users: int
    metadata: dict[str, Any]


@dataclass(frozen=True)
class LoadedModel:
    """A fitted model with the id maps that translate external ids to its indices."""

    version: str
    model: Any
    items: IdMap
    users: IdMap
    info: VersionInfo


def version_name(number: int) -> str:
    return f"v{number:04d}"


def _version_number(name: str) -> int | None:
    match = _VERSION_RE.match(name)
    return int(match.group(1)) if match else None


def _fsync_tree(path: Path) -> None:
    """Flush every file under ``path``: a renamed version must survive a power cut too."""
    for dirpath, _, filenames in os.walk(path):
        for name in filenames:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(dirpath))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class ArtifactRegistry:
    """Versioned fitted models under one root folder, shared safely between processes."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.versions_dir = self.root / VERSIONS
        try:
            self.versions_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ArtifactError(f"{self.root}: cannot create the artifact folder ({exc})") from None
        self._sweep_stale_staging()

    # -- registration -----------------------------------------------------------------
    def register(
        self,
        model: Any,
        *,
        item_ids: Sequence[str],
        user_ids: Sequence[str],
        metadata: dict[str, Any] | None = None,
    ) -> str:
        """Save a fitted model as the next version and return its name (not activated)."""
        n_items = getattr(model, "n_items_", None)
        n_users = getattr(model, "n_users_", None)
        if n_items is None or n_users is None:
            raise ArtifactError(f"{type(model).__name__} is not fitted; call fit() first")
        if len(item_ids) != n_items:
            raise ArtifactError(f"{len(item_ids)} item ids for a model of {n_items} items")
        if len(user_ids) != n_users:
            raise ArtifactError(f"{len(user_ids)} user ids for a model of {n_users} users")
        items, users = [str(i) for i in item_ids], [str(u) for u in user_ids]
        for what, ids in (("item", items), ("user", users)):
            if len(set(ids)) != len(ids):
                raise ArtifactError(f"duplicate {what} ids: each must appear once")
        try:
            meta_text = json.dumps(metadata or {})
        except (TypeError, ValueError) as exc:
            raise ArtifactError(f"metadata is not JSON-serialisable: {exc}") from None
        manifest: dict[str, Any] = {
            "version": "",
            "model": type(model).__name__,
            "created_at": time.time(),
            "n_items": int(n_items),
            "n_users": int(n_users),
            "metadata": json.loads(meta_text),
        }
        staging = self.root / f"{STAGING_PREFIX}{uuid.uuid4().hex}"
        staging.mkdir()
        try:
            model.save(staging / MODEL_DIR)
            (staging / IDS).write_text(json.dumps({"items": items, "users": users}))
            version = self._publish(staging, manifest)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return version

    def _publish(self, staging: Path, manifest: dict[str, Any]) -> str:
        """Rename ``staging`` to the next free version name; the rename itself is the claim.

        Renaming onto an existing (never empty) version folder fails, so two processes that
        pick the same number cannot both win: the loser takes the next number and retries.
        """
        number = max(self._version_numbers(), default=0) + 1
        while True:
            version = version_name(number)
            manifest["version"] = version
            (staging / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
            _fsync_tree(staging)
            try:
                os.rename(staging, self.versions_dir / version)
            except OSError as exc:
                if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                    raise ArtifactError(f"cannot store {version}: {exc}") from None
                number += 1
                continue
            _fsync_dir(self.versions_dir)
            return version

    def _sweep_stale_staging(self) -> None:
        cutoff = time.time() - STALE_STAGING_S
        for path in self.root.glob(f"{STAGING_PREFIX}*"):
            with contextlib.suppress(OSError):
                if path.is_dir() and path.stat().st_mtime < cutoff:
                    shutil.rmtree(path, ignore_errors=True)

    # -- listing ----------------------------------------------------------------------
    def _version_numbers(self) -> list[int]:
        numbers = []
        for entry in os.scandir(self.versions_dir):
            number = _version_number(entry.name)
            if number is not None and entry.is_dir():
                numbers.append(number)
        return sorted(numbers)

    def versions(self) -> list[VersionInfo]:
        """Every registered version, oldest first."""
        return [self.info(version_name(n)) for n in self._version_numbers()]

    def _known(self) -> str:
        names = [version_name(n) for n in self._version_numbers()]
        return ", ".join(names) if names else "none"

    def _version_dir(self, version: str) -> Path:
        path = self.versions_dir / version
        if _version_number(version) is None or not path.is_dir():
            raise ArtifactError(f"unknown model version {version!r} (known: {self._known()})")
        return path

    def info(self, version: str) -> VersionInfo:
        """The manifest of ``version``; an unknown or corrupt one is an :class:`ArtifactError`."""
        path = self._version_dir(version) / MANIFEST
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError:
            raise ArtifactError(f"{path}: missing; the version folder is incomplete") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ArtifactError(f"{path}: unreadable manifest ({exc})") from None
        try:
            if not isinstance(raw["metadata"], dict):
                raise TypeError("metadata is not an object")
            return VersionInfo(
                version=str(raw["version"]),
                model=str(raw["model"]),
                created_at=float(raw["created_at"]),
                n_items=int(raw["n_items"]),
                n_users=int(raw["n_users"]),
                metadata=raw["metadata"],
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ArtifactError(f"{path}: invalid manifest ({type(exc).__name__}: {exc})") from None

    # -- the active pointer -----------------------------------------------------------
    def active(self) -> str | None:
        """The active version's name, or None before the first activation."""
        try:
            name = (self.root / ACTIVE).read_text().strip()
        except FileNotFoundError:
            return None
        return name or None

    def pointer_mtime(self) -> int:
        """The pointer file's mtime in ns (0 if none): other workers poll it to see activations.

        Every activation makes it strictly larger, even within the filesystem's clock tick.
        """
        try:
            return os.stat(self.root / ACTIVE).st_mtime_ns
        except FileNotFoundError:
            return 0

    def activate(self, version: str) -> None:
        """Make ``version`` the one :meth:`load` returns by default, in every process."""
        self.info(version)
        with self._locked():
            self._set_active(version, rollback=False)

    def rollback(self) -> str:
        """Re-activate the version that was active before the current one; returns its name.

        Rollbacks walk back through the activations: after activating v1, v2, v3, a rollback
        gives v2 and a second one v1.
        """
        with self._locked():
            stack = self._activation_stack()
            if len(stack) < 2:
                raise ArtifactError(
                    f"no earlier version to roll back to (active: {self.active() or 'none'})"
                )
            target = stack[-2]
            self.info(target)
            self._set_active(target, rollback=True)
        return target

    def history(self) -> list[dict[str, Any]]:
        """Every activation, oldest first: ``{"version", "at"}`` plus ``"rollback": true``."""
        try:
            lines = (self.root / HISTORY).read_text().splitlines()
        except FileNotFoundError:
            return []
        out = []
        for line in lines:
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line torn by a crash mid-append
            if isinstance(entry, dict) and isinstance(entry.get("version"), str):
                out.append(entry)
        return out

    def _activation_stack(self) -> list[str]:
        """The versions a rollback would return to, the current one last."""
        stack: list[str] = []
        for entry in self.history():
            version = entry["version"]
            if entry.get("rollback") and stack:
                stack.pop()
            if not stack or stack[-1] != version:
                stack.append(version)
        current = self.active()
        if current is not None and (not stack or stack[-1] != current):
            stack.append(current)  # the pointer was set outside this registry
        return stack

    def _set_active(self, version: str, *, rollback: bool) -> None:
        pointer = self.root / ACTIVE
        before = self.pointer_mtime()
        tmp = self.root / f"{ACTIVE}.{uuid.uuid4().hex}.tmp"
        try:
            with open(tmp, "w") as fh:
                fh.write(version + "\n")
                fh.flush()
                os.fsync(fh.fileno())
            if os.stat(tmp).st_mtime_ns <= before:
                os.utime(tmp, ns=(before + 1, before + 1))
            os.replace(tmp, pointer)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        entry: dict[str, Any] = {"version": version, "at": time.time()}
        if rollback:
            entry["rollback"] = True
        with open(self.root / HISTORY, "a") as fh:
            fh.write(json.dumps(entry) + "\n")
        _fsync_dir(self.root)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Serialise pointer and history updates across processes."""
        with open(self.root / LOCK, "a") as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)

    # -- loading ----------------------------------------------------------------------
    def user_ids(self, version: str) -> list[str]:
        """The external user ids ``version`` was trained with (without loading the model)."""
        ids_path = self.versions_dir / self.info(version).version / IDS
        try:
            return list(json.loads(ids_path.read_text())["users"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ArtifactError(f"{ids_path}: invalid ids file ({exc})") from None

    def load(self, version: str | None = None) -> LoadedModel:
        """A fitted model and its id maps: ``version``, or the active one when None."""
        from recloop.models.registry import model_class  # torch import: only when loading

        if version is None:
            version = self.active()
            if version is None:
                raise ArtifactError(f"{self.root}: no active model version; activate one first")
        info = self.info(version)
        path = self.versions_dir / version
        ids_path = path / IDS
        try:
            ids = json.loads(ids_path.read_text())
            items, users = IdMap(ids["items"]), IdMap(ids["users"])
        except FileNotFoundError:
            raise ArtifactError(f"{ids_path}: missing; the version folder is incomplete") from None
        except (OSError, ValueError, KeyError, TypeError, RecloopError) as exc:
            raise ArtifactError(f"{ids_path}: invalid ids file ({exc})") from None
        if len(items) != info.n_items or len(users) != info.n_users:
            raise ArtifactError(
                f"{ids_path}: {len(items)} items and {len(users)} users, but the manifest "
                f"says {info.n_items} and {info.n_users}"
            )
        try:
            model = model_class(info.model).load(path / MODEL_DIR)
        except (
            RecloopError,
            OSError,
            ValueError,
            KeyError,
            TypeError,
            RuntimeError,
            SafetensorError,
        ) as exc:
            text = " ".join(str(exc).split())
            raise ArtifactError(f"{path / MODEL_DIR}: cannot load the model ({text})") from None
        return LoadedModel(version=version, model=model, items=items, users=users, info=info)
