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
import pytest
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


def _refused(args: list[str], *expected: str) -> str:
    """A user mistake: exit code 2, no traceback, the expected words in the output."""
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output + repr(result.exception)
    assert "Traceback" not in result.output
    assert all(e in result.output for e in expected), result.output
    return result.output


def test_serve_checks_every_option_before_any_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing is imported, trained or served, and no home is made, for a bad option."""
    import uvicorn

    from recloop.service import cli as service_cli

    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("serve went ahead with a bad option")

    monkeypatch.setattr(uvicorn, "run", never)
    monkeypatch.setattr(service_cli, "_first_start", never)
    home = tmp_path / "home"
    serve = ["serve", "--home", str(home)]
    for port in ("99999", "65536", "0", "-1"):
        _refused([*serve, "--port", port], "--port")
    _refused([*serve, "--log-level", "verbose"], "--log-level", "INFO", "'verbose'")
    _refused([*serve, "--model", "Nope"], "unknown model 'Nope'")
    output = _refused([*serve, "--cache", "bogus://x"], "--cache", "unknown cache URL")
    assert "serving on" not in output
    assert not home.exists()
    afile = tmp_path / "afile"
    afile.write_text("keep me")
    _refused(["serve", "--home", str(afile)], f"--home {afile}: exists and is not a folder")


def test_log_level_and_cache_url_are_settings_checks() -> None:
    from pydantic import ValidationError

    from recloop.service.settings import ServiceSettings

    assert ServiceSettings(log_level="debug").log_level == "DEBUG"
    assert ServiceSettings(cache_url="memory").cache_url == "memory"
    assert ServiceSettings(cache_url="redis://127.0.0.1:6379/0").cache_url is not None
    with pytest.raises(ValidationError, match="log level must be one of"):
        ServiceSettings(log_level="verbose")
    with pytest.raises(ValidationError, match="unknown cache URL"):
        ServiceSettings(cache_url="bogus://x")


def test_keys_need_a_name(tmp_path: Path) -> None:
    home = tmp_path / "home"
    for name in ("", "   "):
        _refused(["keys", "create", "--name", name, "--home", str(home)], "--name")
    _refused(["keys", "create", "--name", "x", "--role", "root", "--home", str(home)], "role")
    assert not home.exists()  # a refused key makes no home


def test_commands_on_a_mistyped_home_make_nothing(tmp_path: Path) -> None:
    home = tmp_path / "home"
    run("keys", "create", "--name", "app", "--home", str(home))
    typo = tmp_path / "hmoe"
    for args in (
        ["keys", "list"],
        ["keys", "revoke", "k1"],
        ["keys", "rotate", "k1"],
        ["privacy", "audit"],
        ["privacy", "consent", "u1"],
        ["privacy", "owner", "u1"],
        ["privacy", "purge"],
        ["privacy", "erase", "u1", "--yes"],
        ["model", "list"],
        ["model", "activate", "v0001"],
        ["model", "rollback"],
        ["model", "prices"],
        ["model", "train", "EASE"],
    ):
        _refused([*args, "--home", str(typo)], f"--home {typo}: no such folder")
    assert not typo.exists()
    afile = tmp_path / "afile"
    afile.write_text("keep me")
    _refused(["keys", "list", "--home", str(afile)], f"--home {afile}: not a folder")
    (tmp_path / "empty").mkdir()
    _refused(["keys", "list", "--home", str(tmp_path / "empty")], "no event store at")
    missing = tmp_path / "none.db"
    _refused(["keys", "list", "--db", f"sqlite:///{missing}"], f"--db sqlite:///{missing}")
    assert not missing.exists()
    assert "app" in run("keys", "list", "--home", str(home))  # the real home still works


def test_model_prices_refuses_a_negative_seed(tmp_path: Path) -> None:
    _refused(["model", "prices", "--seed", "-1", "--home", str(tmp_path)], "--seed")
