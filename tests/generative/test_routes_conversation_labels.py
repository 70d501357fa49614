"""``GET /v1/conversations/{id}`` labels every stored turn's text as generated, with its backend."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from generative.test_routes_conversation import Service, bearer, make_service, say, start
from recloop.service.routes_conversation import CONVERSATION_TTL_S, _key


@pytest.fixture()
def service(tmp_path: Path) -> Iterator[Service]:
    yield from make_service(tmp_path, {})


def test_stored_turns_say_they_are_generated_and_what_wrote_them(service: Service) -> None:
    client, keys, state = service
    first = start(client, keys["client"], "u1", "a 90s comedy like Toy Story")
    cid = first["conversation_id"]
    say(client, keys["client"], cid, "something older")
    body = client.get(f"/v1/conversations/{cid}", headers=bearer(keys["client"])).json()
    assert len(body["turns"]) == 2
    for turn in body["turns"]:
        assert turn["generated"] is True and turn["backend"] == first["backend"] == "template"
        assert turn["text"]

    # a state saved before turns kept their backend still reads, labelled, backend unknown
    raw = json.loads(state.cache.get(_key(cid)))  # type: ignore[arg-type]
    for turn in raw["state"]["turns"]:
        del turn["backend"]
    state.cache.set(_key(cid), json.dumps(raw).encode(), ttl=CONVERSATION_TTL_S)
    old = client.get(f"/v1/conversations/{cid}", headers=bearer(keys["client"])).json()
    assert [(t["generated"], t["backend"]) for t in old["turns"]] == [(True, None), (True, None)]
    assert [t["text"] for t in old["turns"]] == [t["text"] for t in body["turns"]]
