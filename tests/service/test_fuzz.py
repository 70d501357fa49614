"""Every operation of the published OpenAPI spec, fed generated input: never a 5xx.

A short in-process run of what ``bench/bench_service_fuzz.py`` does at length against a
running server.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from recloop.service.app import ServiceState, create_app
from recloop.service.bootstrap import import_dataset, train_version
from recloop.service.cli import create_key
from recloop.service.settings import ServiceSettings

from .test_app import tiny_dataset


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, str]]:
    home = tmp_path_factory.mktemp("fuzz") / "home"
    state = ServiceState.open(ServiceSettings(home=home, rate_limit=0.0))
    import_dataset(state.store, tiny_dataset(), source="tiny")
    train_version(state.store, state.registry, "EASE", {"l2": 1.0})
    key = create_key(state.store, "fuzz", "admin")[1]
    yield create_app(state=state), key
    state.close()


def test_no_input_makes_a_server_error(service: tuple[Any, str]) -> None:
    app, key = service
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    headers = {"Authorization": f"Bearer {key}"}
    operations = [result.ok() for result in schema.get_all_operations()]
    routes = sum(len(methods) for methods in app.openapi()["paths"].values())
    assert len(operations) == routes  # every route of the app is fuzzed
    failures: list[str] = []

    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=15,
            deadline=None,
            database=None,
            derandomize=True,
            suppress_health_check=list(HealthCheck),
        )
        def check(case: Any) -> None:
            response = case.call(headers=headers)
            if response.status_code >= 500:
                failures.append(f"{case.method} {case.formatted_path}: {response.status_code}")

        check()
    assert not failures, failures
