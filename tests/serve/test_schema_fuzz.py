"""Property-based requests generated from the service's OpenAPI schema (schemathesis, bounded
in examples and time), valid ones and ones that break the schema: the service never answers
5xx."""

from __future__ import annotations

from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from package_fixtures import TRUST
from schemathesis.generation import GenerationMode

from pinrank.serving.store import TableStore
from serve.app import Settings, create_app

TOKEN = "fuzz-admin-token"
EXAMPLES = 25  # per operation and mode (7 operations x 2 modes): about 2 minutes on 2 cores


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_no_generated_request_gets_a_5xx(
    packages: dict[str, Path], users_path: Path, mode: GenerationMode
) -> None:
    store = TableStore.from_parquet(users_path)
    app = create_app(Settings(packages["a"], trust=TRUST, admin_token=TOKEN), store)
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    fuzzed: list[str] = []
    for result in schema.get_all_operations():
        operation = result.ok()

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            database=None,
            derandomize=True,  # the same examples every run: a failure reproduces
            suppress_health_check=list(HealthCheck),
        )
        def run(case: schemathesis.Case) -> None:
            if case.path == "/admin/reload":  # authorised, but never a real folder (slow)
                case.headers = {**(case.headers or {}), "Authorization": f"Bearer {TOKEN}"}
                if isinstance(case.body, dict) and "package" in case.body:
                    case.body = {"package": "/nonexistent/package"}
            response = case.call()
            assert response.status_code < 500, (case.method, case.path, response.text[:500])

        try:
            run()
        except Unsatisfiable:  # nothing to break in it (e.g. a route without parameters)
            assert mode == GenerationMode.NEGATIVE, operation.label
            continue
        fuzzed.append(operation.label)
    assert {"GET /v1/feed/{user_id}", "POST /v1/score"} <= set(fuzzed), fuzzed
