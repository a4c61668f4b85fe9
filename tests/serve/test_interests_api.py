"""``/v1/interests`` over HTTP: the interest model's answer for sign-up fields (GET and POST
agree), strict 422s naming the bad field, 404 without an interest model, and no 5xx for requests
generated from the OpenAPI schema."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from package_fixtures import TRUST
from schemathesis.generation import GenerationMode

from pinrank.serving.store import TableStore
from serve.app import Settings, create_app


@pytest.fixture(scope="module")
def app(interest_package_dir: Path, users_path: Path) -> Any:
    return create_app(Settings(interest_package_dir, trust=TRUST),
                      TableStore.from_parquet(users_path))  # fmt: skip


def test_get_and_post_give_the_same_interests(app: Any) -> None:
    client = TestClient(app)
    got = client.get("/v1/interests", params={"k": 5, "country": "US", "gender": "F", "age": 31})
    assert got.status_code == 200, got.text
    body = got.json()
    assert body["k"] == 5 and len(body["interests"]) == 5 and body["segment"] == "US|F"
    scores = [i["score"] for i in body["interests"]]
    assert scores == sorted(scores, reverse=True) and all(0 < s < 1 for s in scores)
    posted = client.post(
        "/v1/interests", json={"k": 5, "signup": {"country": "US", "gender": "F", "age": 31}}
    )
    assert posted.status_code == 200 and posted.json() == body
    # followed interests (a list field) in both forms
    first = body["interests"][0]["interest_id"]
    a = client.get(f"/v1/interests?k=3&country=US&interests={first}&interests={first}")
    b = client.post(
        "/v1/interests", json={"k": 3, "signup": {"country": "US", "interests": [first, first]}}
    )
    assert a.status_code == b.status_code == 200 and a.json() == b.json()
    # nothing given: the global candidates, scored with every field missing
    empty = client.get("/v1/interests").json()
    assert len(empty["interests"]) == 10 and empty["segment"] == "|"


@pytest.mark.parametrize(
    ("method", "request_", "message"),
    [
        ("get", "/v1/interests?zip=1", "unknown query parameters ['zip']"),
        ("get", "/v1/interests?age=old", "query.age: not a plain decimal integer"),
        ("get", "/v1/interests?k=0", "query.k: must be in [1, 1000]"),
        ("get", "/v1/interests?country=US&country=BR", "query.country: given 2 times"),
        ("post", {"k": 3, "signup": {"zip": "1"}}, "unknown sign-up fields ['zip']"),
        ("post", {"k": 3, "signup": {"age": "31"}}, "body.signup.age: expected an integer"),
        ("post", {"k": 3, "signup": {"interests": [1, "x"]}}, "signup.interests: expected a list"),
        ("post", {"k": 1001}, "body.k"),
        ("post", {"k": 3, "extra": 1}, "body.extra"),
    ],
)
def test_bad_requests_are_422s_naming_the_field(
    app: Any, method: str, request_: Any, message: str
) -> None:
    client = TestClient(app)
    if method == "get":
        response = client.get(request_)
    else:
        response = client.post("/v1/interests", json=request_)
    assert response.status_code == 422, response.text
    assert message in response.json()["error"]["message"]


def test_a_package_without_an_interest_model_answers_404(
    packages: dict[str, Path], users_path: Path
) -> None:
    app = create_app(Settings(packages["a"], trust=TRUST), TableStore.from_parquet(users_path))
    client = TestClient(app)
    assert client.get("/v1/interests?k=3").status_code == 404
    assert client.post("/v1/interests", json={"k": 3}).status_code == 404


def test_concurrent_requests_batched_in_processes_answer_as_one_thread_does(
    app: Any, interest_package_dir: Path, users_path: Path
) -> None:
    """The default service batches interest requests into its scoring processes (one
    rank_many per batch); a service scoring each request alone in a thread answers the same."""
    alone = create_app(
        Settings(interest_package_dir, trust=TRUST, scoring="threads", batch_max=1),
        TableStore.from_parquet(users_path),
    )
    paths = [
        f"/v1/interests?k=4&country={c}&gender={g}&age={age}"
        for c in ("US", "BR", "ZZ") for g in ("F", "M") for age in (19, 44)
    ]  # fmt: skip
    batched_client, alone_client = TestClient(app), TestClient(alone)
    with ThreadPoolExecutor(8) as pool:  # concurrent: the batcher groups them
        batched = list(pool.map(lambda p: batched_client.get(p), paths * 3))
        one_by_one = list(pool.map(lambda p: alone_client.get(p), paths))
    assert all(r.status_code == 200 for r in batched + one_by_one)
    for i, single in enumerate(one_by_one):
        for got in (batched[i], batched[i + len(paths)], batched[i + 2 * len(paths)]):
            a, b = got.json(), single.json()
            assert [x["interest_id"] for x in a["interests"]] == [
                x["interest_id"] for x in b["interests"]
            ]
            assert a["segment"] == b["segment"] and a["replaced"] == b["replaced"]
            np.testing.assert_allclose([x["score"] for x in a["interests"]],
                                       [x["score"] for x in b["interests"]], rtol=1e-5)  # fmt: skip


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_no_generated_interest_request_gets_a_5xx(app: Any, mode: GenerationMode) -> None:
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    done = []
    for result in schema.get_all_operations():
        operation = result.ok()
        if operation.path != "/v1/interests":
            continue

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(max_examples=25, deadline=None, database=None, derandomize=True,
                  suppress_health_check=list(HealthCheck))  # fmt: skip
        def run(case: schemathesis.Case) -> None:
            response = case.call()
            assert response.status_code < 500, (case.method, response.text[:500])

        try:
            run()
        except Unsatisfiable:
            continue
        done.append(operation.method.upper())
    assert "GET" in done or mode == GenerationMode.NEGATIVE
