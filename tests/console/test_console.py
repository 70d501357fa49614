"""The web console with FastAPI's TestClient: login, cookies, CSRF, every page, every action.

A real SQLite store and a real trained EASE on a small movie catalogue (three taste groups),
the real app with the console mounted.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from recloop.console import mount, plots, views
from recloop.console.api import route_for
from recloop.data.types import Catalog, Dataset, IdMap, Interactions
from recloop.service.app import ServiceState, create_app
from recloop.service.bootstrap import import_dataset, train_version
from recloop.service.cli import create_key
from recloop.service.settings import ServiceSettings

MOVIES = [
    ("m1", "Toy Story", 1995, ["Animation", "Comedy"]),
    ("m2", "Aladdin", 1992, ["Animation", "Comedy"]),
    ("m3", "Babe", 1995, ["Comedy"]),
    ("m4", "Groundhog Day", 1993, ["Comedy", "Romance"]),
    ("m5", "Clueless", 1995, ["Comedy", "Romance"]),
    ("m6", "Airplane!", 1980, ["Comedy"]),
    ("m7", "Scream", 1996, ["Horror", "Thriller"]),
    ("m8", "The Shining", 1980, ["Horror"]),
    ("m9", "Alien", 1979, ["Horror", "Sci-Fi"]),
    ("m10", "Halloween", 1978, ["Horror"]),
    ("m11", "Heat", 1995, ["Action", "Crime", "Thriller"]),
    ("m12", "Fargo", 1996, ["Crime", "Drama", "Thriller"]),
    ("m13", "Casino", 1995, ["Crime", "Drama"]),
    ("m14", "Se7en", 1995, ["Crime", "Thriller"]),
    ("m15", "Star Wars", 1977, ["Action", "Sci-Fi"]),
    ("m16", "Blade Runner", 1982, ["Sci-Fi", "Thriller"]),
]
GROUPS = (range(0, 6), range(6, 10), range(10, 16))
USERS_PER_GROUP = 12
PAGES = (
    "/",
    "/models/v0001",
    "/try",
    "/try?user=u1",
    "/loop",
    "/gaps?segments=3",
    "/review",
    "/privacy",
    "/privacy?user=u1",
)


def movie_dataset() -> Dataset:
    """Three taste groups of 12 users each: comedies, horror, crime and sci-fi."""
    rng = np.random.default_rng(0)
    users, items, stamps = [], [], []
    for g, group in enumerate(GROUPS):
        for k in range(USERS_PER_GROUP):
            u = g * USERS_PER_GROUP + k
            for t, i in enumerate(rng.permutation(list(group))[:4]):
                users.append(u)
                items.append(int(i))
                stamps.append(1_000_000 + 10 * t)
    n_users = len(GROUPS) * USERS_PER_GROUP
    user_map = IdMap(f"u{u}" for u in range(n_users))
    item_map = IdMap(m[0] for m in MOVIES)
    inter = Interactions.from_arrays(users, items, stamps, users=user_map, items=item_map)
    catalog = Catalog(
        item_map,
        [m[1] for m in MOVIES],
        [f"{m[1]} ({m[2]}). Genres: {', '.join(m[3])}" for m in MOVIES],
        {"year": [m[2] for m in MOVIES], "genres": [m[3] for m in MOVIES]},
    )
    return Dataset("movies", inter, catalog)


class WordEncoder:
    """A tiny deterministic text encoder (hashed bag of words): no model is loaded."""

    name = "console-test-words"

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), 64), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in re.findall(r"[a-z0-9]+", text.lower()):
                digest = hashlib.sha256(word.encode()).digest()
                out[row, digest[0] % 64] += 1.0
        return out


def open_service(home: Path) -> tuple[ServiceState, dict[str, str]]:
    """A state on a fresh home: the movies imported, EASE v0001 and ItemKNN v0002 trained
    (v0002 active), an admin and a client key."""
    from recloop.service.routes_conversation import ENCODER

    settings = ServiceSettings(home=home, key_cache_s=0.0, model_check_s=0.05)
    state = ServiceState.open(settings)
    state.extensions[ENCODER] = WordEncoder()
    import_dataset(state.store, movie_dataset(), source="movies")
    train_version(state.store, state.registry, "EASE", {"l2": 1.0})
    train_version(state.store, state.registry, "ItemKNN", {})
    keys = {role: create_key(state.store, f"test {role}", role)[1] for role in ("client", "admin")}
    return state, keys


def console_app(state: ServiceState) -> object:
    app = create_app(state=state)
    mount(app)  # until create_app mounts it; a second call does nothing
    return app


Console = tuple[TestClient, dict[str, str], ServiceState]


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Console]:
    state, keys = open_service(tmp_path_factory.mktemp("console") / "home")
    with TestClient(console_app(state)) as client:  # type: ignore[arg-type]
        yield client, keys, state


@pytest.fixture()
def client(console: Console) -> Iterator[TestClient]:
    test_client = console[0]
    test_client.cookies.clear()
    yield test_client
    test_client.cookies.clear()


def token_in(page: str) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert found, "the page has no form token"
    return found.group(1)


def log_in(client: TestClient, key: str) -> str:
    """Log in and return the session's form token."""
    form = client.get("/console/login")
    answer = client.post(
        "/console/login",
        data={"csrf_token": token_in(form.text), "api_key": key, "next": "/"},
        follow_redirects=False,
    )
    assert answer.status_code == 303, answer.text
    return token_in(client.get("/console/").text)


def flash(page: str) -> str:
    found = re.search(r'id="flash">([^<]*)<', page)
    return found.group(1) if found else ""


# ------------------------------------------------------------------------------ auth
def test_every_page_and_action_needs_a_session(client: TestClient) -> None:
    for path in PAGES:
        answer = client.get("/console" + path, follow_redirects=False)
        assert answer.status_code == 303, path
        assert answer.headers["location"].startswith("/console/login"), path
    answer = client.get("/console/loop", follow_redirects=False)
    assert answer.headers["location"] == "/console/login?next=%2Floop"
    for path in ("/models/rollback", "/privacy/erase", "/review/x/approve", "/try/feedback"):
        answer = client.post("/console" + path, data={"user": "u1"}, follow_redirects=False)
        assert answer.status_code == 303 and answer.headers["location"] == "/console/login"


def test_bad_keys_and_client_keys_cannot_log_in(console: Console, client: TestClient) -> None:
    _, keys, _ = console
    for key, reason in (
        ("not-a-key", "unknown or revoked key"),
        ("rlk_0123456789ab_" + "x" * 40, "unknown or revoked key"),
        (keys["client"], "only admin keys may use the console"),
    ):
        form = client.get("/console/login")
        answer = client.post(
            "/console/login",
            data={"csrf_token": token_in(form.text), "api_key": key, "next": "/"},
            follow_redirects=False,
        )
        assert answer.status_code == 401 and reason in answer.text
        assert key not in answer.text
        assert "recloop_console=" not in answer.headers.get("set-cookie", "")
        assert client.get("/console/", follow_redirects=False).status_code == 303


def test_the_login_form_carries_its_own_token(console: Console, client: TestClient) -> None:
    _, keys, _ = console
    client.get("/console/login")
    for sent in ({}, {"csrf_token": "forged"}):
        answer = client.post(
            "/console/login", data={"api_key": keys["admin"], **sent}, follow_redirects=False
        )
        assert answer.status_code == 403 and "expired" in answer.text
    assert client.get("/console/", follow_redirects=False).status_code == 303


def test_session_cookie_is_http_only_strict_and_scoped(
    console: Console, client: TestClient
) -> None:
    _, keys, state = console
    form = client.get("/console/login")
    answer = client.post(
        "/console/login",
        data={"csrf_token": token_in(form.text), "api_key": keys["admin"], "next": "/loop"},
        follow_redirects=False,
    )
    assert answer.status_code == 303 and answer.headers["location"] == "/console/loop"
    cookie = next(c for c in answer.headers.get_list("set-cookie") if "recloop_console=" in c)
    flags = [part.strip().lower() for part in cookie.split(";")]
    assert {"httponly", "samesite=strict", "path=/console"} <= set(flags)
    assert "secure" not in flags  # plain http here
    session_id = cookie.split(";")[0].split("=", 1)[1]
    assert len(session_id) >= 40
    # the store keeps the session's hash, never the id; the id is no API key
    rows = [k for k in state.store.list_keys() if k.key_id.startswith("console-")]
    assert rows and all(session_id not in (k.key_hash, k.name, k.key_id) for k in rows)
    refused = client.get("/v1/models", headers={"Authorization": f"Bearer {session_id}"})
    assert refused.status_code == 401


def test_cookie_is_secure_over_https(console: Console) -> None:
    client_, keys, _ = console
    with TestClient(client_.app, base_url="https://testserver") as https:
        form = https.get("/console/login")
        login_cookie = form.headers["set-cookie"].lower()
        assert "secure" in login_cookie and "httponly" in login_cookie
        answer = https.post(
            "/console/login",
            data={"csrf_token": token_in(form.text), "api_key": keys["admin"]},
            follow_redirects=False,
        )
        cookie = next(c for c in answer.headers.get_list("set-cookie") if "recloop_console=" in c)
        assert "secure" in [p.strip().lower() for p in cookie.split(";")]


def test_posts_without_the_right_csrf_token_are_refused(
    console: Console, client: TestClient
) -> None:
    _, keys, state = console
    token = log_in(client, keys["admin"])
    active = state.registry.active()
    for sent in ({}, {"csrf_token": "0" * 64}, {"csrf_token": token[:-1]}):
        answer = client.post("/console/models/rollback", data=sent, follow_redirects=False)
        assert answer.status_code == 403 and "CSRF" in answer.text
        answer = client.post("/console/privacy/erase", data={"user": "u3", "confirm": "u3", **sent})
        assert answer.status_code == 403
    assert state.registry.active() == active
    assert state.store.history("u3")  # not erased
    # another session's token is no good either
    other = TestClient(client.app)
    other_token = log_in(other, keys["admin"])
    assert other_token != token
    answer = client.post("/console/models/rollback", data={"csrf_token": other_token})
    assert answer.status_code == 403


def test_every_page_renders_for_an_admin(console: Console, client: TestClient) -> None:
    _, keys, _ = console
    log_in(client, keys["admin"])
    for path in PAGES:
        answer = client.get("/console" + path)
        assert answer.status_code == 200, (path, answer.text[-2000:])
        assert "Traceback" not in answer.text
        assert 'aria-current="page"' in answer.text
        assert "default-src 'self'" in answer.headers["content-security-policy"]
        assert answer.headers["cache-control"] == "no-store"
        assert not re.search(r"(src|href|action)=\"(https?:)?//", answer.text)  # no CDN
    overview = client.get("/console/").text
    assert "v0002" in overview and "ItemKNN" in overview and "ndcg@10" in overview
    assert "<svg" in overview  # the leaderboard plots
    card = client.get("/console/models/v0001").text
    assert "Holdout metrics" in card and "Limitations" in card
    markdown = client.get("/console/models/v0001/card.md")
    assert markdown.status_code == 200 and markdown.text.startswith("# Model card: v0001")
    static = client.get("/console/static/console.css")
    assert static.status_code == 200 and "text/css" in static.headers["content-type"]


def test_session_outlives_cache_invalidations_and_ends_at_logout(
    console: Console, client: TestClient
) -> None:
    _, keys, state = console
    token = log_in(client, keys["admin"])
    state.cache.invalidate()  # what every consent change, erasure and activation does
    assert client.get("/console/loop").status_code == 200
    cookie = client.cookies.get("recloop_console")
    answer = client.post("/console/logout", data={"csrf_token": token}, follow_redirects=False)
    assert answer.status_code == 303 and answer.headers["location"] == "/console/login"
    assert "recloop_console=" in answer.headers["set-cookie"]
    assert client.get("/console/", follow_redirects=False).status_code == 303
    client.cookies.set("recloop_console", cookie or "", path="/console")  # a replayed cookie
    assert client.get("/console/", follow_redirects=False).status_code == 303


def test_revoking_the_admin_key_ends_its_sessions(console: Console, client: TestClient) -> None:
    _, _, state = console
    key_id, secret = create_key(state.store, "short-lived admin", "admin")
    log_in(client, secret)
    assert client.get("/console/").status_code == 200
    state.store.revoke_key(key_id, time.time())
    assert client.get("/console/", follow_redirects=False).status_code == 303


# ------------------------------------------------------------------------------ pages
def test_recommend_then_feedback(console: Console, client: TestClient) -> None:
    _, keys, state = console
    token = log_in(client, keys["admin"])
    answer = client.post(
        "/console/try/recommend",
        data={"csrf_token": token, "user": "u1", "n": "4"},
        follow_redirects=False,
    )
    assert answer.status_code == 303
    found = re.search(r"slate=([0-9a-f]{32})", answer.headers["location"])
    assert found
    slate_id = found.group(1)
    page = client.get(answer.headers["location"]).text
    rows = re.findall(r'<tr data-item="([^"]+)"', page)
    assert len(rows) == 4
    assert "personalised" in page and "faithful" in page  # source, explanation
    item = rows[0]
    answer = client.post(
        "/console/try/feedback",
        data={"csrf_token": token, "user": "u1", "slate": slate_id, "item": item, "kind": "click"},
    )
    assert answer.status_code == 200 and flash(answer.text).startswith(f"Stored: click on {item}")
    assert views.slate_feedback(state, slate_id, "u1") == {item: ["click"]}
    assert views.slate_feedback(state, slate_id, "u2") == {}  # only its user's events
    # a kind the API does not take is a message, not an error page
    answer = client.post(
        "/console/try/feedback",
        data={"csrf_token": token, "user": "u1", "slate": slate_id, "item": item, "kind": "x"},
    )
    assert "feedback must be one of" in flash(answer.text)
    # feedback answers this slate: its own user, an item it showed, a slate that exists
    before = state.store.count_events()
    for user, slate, shown, message in (
        ("u2", slate_id, item, "belongs to another user"),
        ("u1", slate_id, "not-shown", "did not show"),
        ("u1", "0" * 32, item, "not in the slate log"),
    ):
        answer = client.post(
            "/console/try/feedback",
            data={
                "csrf_token": token,
                "user": user,
                "slate": slate,
                "item": shown,
                "kind": "click",
            },
        )
        assert message in flash(answer.text)
    assert state.store.count_events() == before


def test_create_a_user_and_chat(console: Console, client: TestClient) -> None:
    _, keys, state = console
    token = log_in(client, keys["admin"])
    answer = client.post(
        "/console/try/users", data={"csrf_token": token, "user": "newbie", "age": "30"}
    )
    assert flash(answer.text) == "User newbie saved." and "User newbie" in answer.text
    assert state.store.get_user("newbie") == {"age": "30"}
    answer = client.post(
        "/console/try/chat",
        data={"csrf_token": token, "user": "newbie", "message": "a scary horror film"},
    )
    assert answer.status_code == 200
    assert 'class="msg bot"' in answer.text and "a scary horror film" in answer.text
    conversation = re.search(r'name="conversation" value="([^"]+)"', answer.text)
    assert conversation and conversation.group(1)
    answer = client.post(
        "/console/try/chat",
        data={
            "csrf_token": token,
            "user": "newbie",
            "message": "something older",
            "conversation": conversation.group(1),
        },
    )
    assert answer.text.count('class="msg bot"') == 2


def test_generate_approve_edit_and_reject(console: Console, client: TestClient) -> None:
    _, keys, _ = console
    token = log_in(client, keys["admin"])
    answer = client.post(
        "/console/review/generate",
        data={"csrf_token": token, "segments": "3", "top": "2", "back": "gaps"},
    )
    assert answer.status_code == 200 and flash(answer.text).startswith("Generated 2 pieces")
    assert "/console/gaps?segments=3" in str(answer.url)
    review = client.get("/console/review").text
    pending = re.findall(r'data-approve="([^"]+)"', review)
    assert len(pending) >= 2
    answer = client.post(
        f"/console/review/{pending[0]}/approve", data={"csrf_token": token, "status": "pending"}
    )
    assert flash(answer.text).endswith("is now approved.")
    answer = client.post(
        f"/console/review/{pending[1]}/reject", data={"csrf_token": token, "reason": "  "}
    )
    assert "a reason to reject is required" in flash(answer.text)
    answer = client.post(
        f"/console/review/{pending[1]}/reject", data={"csrf_token": token, "reason": "dull"}
    )
    assert flash(answer.text).endswith("is now rejected.")
    answer = client.post(f"/console/review/{pending[1]}/approve", data={"csrf_token": token})
    assert "only a pending piece can be approved" in flash(answer.text)  # the 409, shown
    answer = client.post(
        f"/console/review/{pending[1]}/edit",
        data={
            "csrf_token": token,
            "title": "Crime nights",
            "description": "Tense crime films.",
            "items": "m11, m12 m13",
        },
    )
    assert re.fullmatch("“Crime nights” is now (pending|rejected).", flash(answer.text))
    approved = client.get("/console/review?status=approved").text
    assert pending[0] in approved
    gaps = client.get("/console/gaps?segments=3").text
    assert "approved" in gaps  # the segment's generated content is listed


def test_consent_and_erasure(console: Console, client: TestClient) -> None:
    _, keys, state = console
    token = log_in(client, keys["admin"])
    answer = client.post(
        "/console/privacy/consent",
        data={"csrf_token": token, "user": "u20", "training": "on"},
    )
    assert "personalisation off, training on, generative off" in flash(answer.text)
    assert not state.privacy.consent("u20").personalisation
    answer = client.post(
        "/console/privacy/erase", data={"csrf_token": token, "user": "u21", "confirm": "u2"}
    )
    assert "type the user id again" in flash(answer.text)
    assert state.store.history("u21")
    answer = client.post(
        "/console/privacy/erase", data={"csrf_token": token, "user": "u21", "confirm": "u21"}
    )
    assert flash(answer.text).startswith("Erased u21: 4 events")
    assert not state.store.history("u21") and "u21" in state.erased
    assert "erasure-complete" in answer.text and "u21" in answer.text  # the audit log
    answer = client.post(
        "/console/try/recommend", data={"csrf_token": token, "user": "u21", "n": "3"}
    )  # an erased user's answer is not logged: shown once, without feedback buttons
    assert answer.status_code == 200 and "not personalised" in answer.text
    assert "the user is erased" in answer.text and 'data-feedback="click"' not in answer.text
    assert client.get("/console/").status_code == 200  # still logged in


def test_activate_and_roll_back(console: Console, client: TestClient) -> None:
    _, keys, state = console
    token = log_in(client, keys["admin"])
    answer = client.post("/console/models/activate", data={"csrf_token": token, "version": "v0002"})
    assert flash(answer.text) == "v0002 is now the active version."
    answer = client.post("/console/models/rollback", data={"csrf_token": token})
    assert flash(answer.text) == "Rolled back: v0001 is active again."
    assert state.registry.active() == "v0001"
    answer = client.post("/console/models/activate", data={"csrf_token": token, "version": "v9"})
    assert flash(answer.text) == "version is not valid"
    answer = client.post("/console/models/activate", data={"csrf_token": token, "version": "v0042"})
    assert "unknown model version" in flash(answer.text)
    client.post("/console/models/activate", data={"csrf_token": token, "version": "v0002"})


def test_mistakes_read_as_messages(console: Console, client: TestClient) -> None:
    _, keys, _ = console
    token = log_in(client, keys["admin"])
    answer = client.post(
        "/console/try/recommend", data={"csrf_token": token, "user": "u1", "n": "many"}
    )
    assert flash(answer.text) == "number of items must be a whole number"
    answer = client.post("/console/try/recommend", data={"csrf_token": token, "user": " "})
    assert flash(answer.text) == "user id is required"
    assert "must not contain control characters" in client.get("/console/try?user=a%01b").text
    assert "segments must be between 2 and 64" in client.get("/console/gaps?segments=1").text
    assert "not in the slate log" in client.get("/console/try?user=u1&slate=abc").text
    assert client.get("/console/models/nope").status_code == 404
    hostile = "<script>alert(1)</script>"
    page = client.get("/console/try", params={"user": hostile}).text
    assert hostile not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page


def test_a_missing_route_shows_not_available(
    console: Console, client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    import recloop.console.api as api

    _, keys, _ = console
    log_in(client, keys["admin"])
    real = api.route_for

    def without(app: object, method: str, path: str) -> object:
        if path in ("/v1/loop", "/v1/conversations", "/v1/fairness"):
            return None
        return real(app, method, path)

    monkeypatch.setattr(api, "route_for", without)
    loop = client.get("/console/loop")
    assert loop.status_code == 200 and "Not available" in loop.text
    page = client.get("/console/try?user=u1")
    assert "this service has no /v1/conversations" in page.text
    assert "Not available" in client.get("/console/privacy").text


def test_the_console_finds_the_routes_it_calls(console: Console) -> None:
    client_, _, _ = console
    for method, path in (
        ("GET", "/v1/models"),
        ("POST", "/v1/models/{version}/activate"),
        ("GET", "/v1/models/{version}/card"),
        ("GET", "/v1/users/{user_id}/recommendations"),
        ("POST", "/v1/events"),
        ("POST", "/v1/users"),
        ("GET", "/v1/users/{user_id}/consent"),
        ("PUT", "/v1/users/{user_id}/consent"),
        ("DELETE", "/v1/users/{user_id}"),
        ("GET", "/v1/audit"),
        ("GET", "/v1/loop"),
        ("GET", "/v1/gaps"),
        ("GET", "/v1/explanations/{slate_id}/{position}"),
        ("POST", "/v1/conversations"),
        ("POST", "/v1/conversations/{conversation_id}/messages"),
        ("GET", "/v1/conversations/{conversation_id}"),
        ("GET", "/v1/review"),
        ("POST", "/v1/review/generate"),
        ("POST", "/v1/review/{content_id}/approve"),
        ("POST", "/v1/review/{content_id}/reject"),
        ("POST", "/v1/review/{content_id}/edit"),
    ):
        assert route_for(client_.app, method, path) is not None, (method, path)


# ------------------------------------------------------------------------------ views
def test_highlighted_marks_merged_spans() -> None:
    assert views.highlighted("hello world", [[0, 5], [3, 7], [20, 30]]) == [
        ("hello w", True),
        ("orld", False),
    ]
    assert views.highlighted("abc", []) == [("abc", False)]
    assert views.highlighted("", [[0, 1]]) == [("", False)]


def test_loop_history_and_gap_map_and_fairness_are_drawn() -> None:
    loop = {
        "arms": [{"name": "model"}, {"name": "popular-led"}],
        "segments": {"new": {"probabilities": {"model": 0.3, "popular-led": 0.7}}},
        "history": [
            {"at": 1.0, "segment": "new", "probabilities": {"model": 0.5, "popular-led": 0.5}},
            {"at": 2.0, "segment": "new", "probabilities": {"model": 0.3, "popular-led": 0.7}},
        ],
        "sources": {"model": {"impressions": 10, "clicks": 2, "ctr": 0.2}},
        "positions": {},
        "offpolicy": {
            "slates": 5,
            "logged_value": 0.2,
            "policies": {
                "uniform": {"ips": {"value": 0.1, "ci_low": 0.0, "ci_high": 0.3}},
            },
        },
    }
    charts = views.loop_charts(loop)
    assert charts["history_available"] and len(charts["history"]) == 1
    assert "polyline" in charts["history"][0][1]
    assert charts["offpolicy_chart"] is not None and charts["positions"] is None
    gaps = {  # worst first; a point's segment indexes this list
        "segments": [{"segment": 7, "gap": 0.5}, {"segment": 3, "gap": 0.1}],
        "map": {
            "points": [{"x": 0.0, "y": 1.0, "segment": 0}, {"x": 2.0, "y": -1.0, "segment": 1}],
            "centroids": [{"segment": 0, "x": 0.0, "y": 1.0}],
        },
    }
    drawn = views.gap_map(gaps)
    assert drawn is not None and drawn.count("<circle") == 3 and ">s7<" in drawn
    worst, best = plots.gap_colour(1.0), plots.gap_colour(0.0)
    assert drawn.index(worst) < drawn.index(best)  # the first point is segment 7's
    assert views.gap_colours(gaps) == {7: worst, 3: best}
    assert views.gap_map({"segments": [], "map": {}}) is None
    fairness = views.fairness_charts(
        {
            "exposure_gini": 0.4,
            "by_popularity_band": {
                "tail": {"impressions_share": 0.1, "catalogue_share": 0.6},
                "head": {"impressions_share": 0.7, "catalogue_share": 0.1},
            },
            "by_genre": {},
            "by_segment": {"new": {"slates": 3, "ctr": 0.1}},
        }
    )
    assert fairness["gini"] == 0.4 and fairness["genres"] is None
    assert fairness["bands"].index("head") < fairness["bands"].index("tail")


def test_chart_labels_are_escaped() -> None:
    chart = plots.bar_chart([plots.Bar("<b>x</b>", 0.5)], title="t & u")
    assert "<b>" not in chart and "&lt;b&gt;x&lt;/b&gt;" in chart and "t &amp; u" in chart
    assert "n/a" in plots.bar_chart([plots.Bar("a", None)], title="t")
