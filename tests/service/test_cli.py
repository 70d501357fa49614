"""``recloop keys``, ``recloop model`` and ``recloop serve`` as a user runs them."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
from typer.testing import CliRunner

from recloop.cli import app
from recloop.service.auth import hash_key
from recloop.service.bootstrap import import_dataset
from recloop.store.artifacts import ArtifactRegistry
from recloop.store.events import EventStore

from .test_app import tiny_dataset

runner = CliRunner()


def run(*args: str) -> str:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def test_keys_create_list_rotate_revoke(tmp_path: Path) -> None:
    home = str(tmp_path / "home")
    secret = run("keys", "create", "--name", "app", "--role", "client", "--home", home)
    secret = secret.strip().splitlines()[-1]
    assert secret.startswith("rlk_")
    store = EventStore(f"sqlite:///{tmp_path / 'home' / 'recloop.db'}")
    try:
        (key,) = store.list_keys()
        assert key.key_hash == hash_key(secret) and key.role == "client"
        assert secret not in run("keys", "list", "--home", home)
        rotated = run("keys", "rotate", key.key_id, "--home", home).strip().splitlines()[-1]
        assert rotated.startswith("rlk_") and rotated != secret
        keys = {k.key_id: k for k in store.list_keys()}
        assert keys[key.key_id].revoked_at is not None
        new = next(k for k in keys.values() if k.key_id != key.key_id)
        assert new.revoked_at is None and new.name == "app" and new.role == "client"
        run("keys", "revoke", new.key_id, "--home", home)
        assert all(k.revoked_at is not None for k in store.list_keys())
    finally:
        store.close()
    bad = runner.invoke(app, ["keys", "create", "--name", "x", "--role", "root", "--home", home])
    assert bad.exit_code == 2 and "role must be one of" in bad.output


def test_model_train_list_activate(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    store = EventStore(f"sqlite:///{home / 'recloop.db'}")
    import_dataset(store, tiny_dataset(), source="tiny")
    store.close()
    assert "registered EASE as v0001 (active)" in run("model", "train", "EASE", "--home", str(home))
    out = run("model", "train", "Popular", "--no-activate", "--home", str(home))
    assert "registered Popular as v0002" in out and "active" not in out
    registry = ArtifactRegistry(home / "models")
    assert registry.active() == "v0001"
    run("model", "activate", "v0002", "--home", str(home))
    assert registry.active() == "v0002"
    assert "v0002" in run("model", "list", "--home", str(home))
    assert "v0001 is active" in run("model", "rollback", "--home", str(home))
    assert registry.active() == "v0001"
    unknown = runner.invoke(app, ["model", "train", "Nope", "--home", str(home)])
    assert unknown.exit_code == 2 and "unknown model 'Nope'" in unknown.output


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_serve_from_an_empty_home(tmp_path: Path, ml100k_dir: Path) -> None:
    """The README's path: one command, then events in and labelled recommendations out."""
    port = _free_port()
    env = {**os.environ, "RECLOOP_DATA": str(ml100k_dir.parent)}
    cmd = [sys.executable, "-m", "recloop", "serve", "--home", str(tmp_path / "home")]
    server = subprocess.Popen(
        [*cmd, "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    try:
        key = None
        assert server.stdout is not None
        for line in server.stdout:  # the first-start admin key is printed once
            if line.startswith("rlk_"):
                key = line.strip()
                break
        assert key is not None
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{base}/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        headers = {"Authorization": f"Bearer {key}"}
        event = {"event_id": "readme-1", "user_id": "1", "item_id": "50", "kind": "click"}
        posted = httpx.post(f"{base}/v1/events", json={"events": [event]}, headers=headers)
        assert posted.json()["stored"] == 1
        slate = httpx.get(f"{base}/v1/users/1/recommendations?n=5", headers=headers).json()
        assert len(slate["items"]) == 5 and slate["model_version"] == "v0001"
        # the model's items (labelled EASE) blended by the loop with its other sources
        assert {it["source"] for it in slate["items"]} <= {"EASE", "content", "popular"}
        assert slate["personalised"] is True
        assert "50" not in [it["item_id"] for it in slate["items"]]
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


def test_privacy_consent_erase_audit_and_purge(tmp_path: Path) -> None:
    home = str(tmp_path / "home")
    (tmp_path / "home").mkdir()
    with EventStore(f"sqlite:///{tmp_path / 'home' / 'recloop.db'}") as store:
        import_dataset(store, tiny_dataset(), source="tiny")
    run("model", "train", "EASE", "--home", home)
    assert '"generative": false' in run("privacy", "consent", "u1", "--home", home)
    changed = run("privacy", "consent", "u1", "--no-training", "--home", home)
    assert '"training": false' in changed and '"personalisation": true' in changed
    erased = run("privacy", "erase", "u1", "--yes", "--home", home)
    assert '"events": 4' in erased and '"consent": true' in erased
    with EventStore(f"sqlite:///{tmp_path / 'home' / 'recloop.db'}") as store:
        assert store.history("u1") == []
    audit = run("privacy", "audit", "--subject", "u1", "--home", home)
    assert "erasure-complete" in audit and "consent" in audit
    assert "slates" in run("privacy", "purge", "--home", home)
