"""The feed service over HTTP (FastAPI's TestClient, and a real uvicorn server for reload under
load): answers equal the embedded scorer's, bad requests get a 4xx naming the problem, the admin
endpoint needs its token, reloads are atomic and refuse bad packages, a failed store degrades
feeds, and the service does not import torch."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import textwrap
import threading
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pyarrow as pa
import pytest
import uvicorn
from fastapi.testclient import TestClient
from package_fixtures import ROOT, TRUST, wait_until_up

from pinrank.serving.feed import ERROR, PERSONALIZED, PERSONALIZED_DEFAULTS
from pinrank.serving.package import load_package
from pinrank.serving.runtime import OnnxBackend
from pinrank.serving.scorer import FeedScorer
from pinrank.serving.store import StoreError, TableStore
from serve.app import Settings, create_app

TOKEN = "test-admin-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def store(users_path: Path) -> TableStore:
    return TableStore.from_parquet(users_path)


@pytest.fixture(scope="module")
def client(packages: dict[str, Path], store: TableStore) -> TestClient:
    return TestClient(create_app(Settings(packages["a"], trust=TRUST, admin_token=TOKEN), store))


@pytest.fixture(scope="module")
def reference(packages: dict[str, Path], store: TableStore) -> FeedScorer:
    """The embedded scorer on the same package, built outside the service."""
    package = load_package(packages["a"], TRUST)
    return FeedScorer(package, store, OnnxBackend(package, threads=1))


def user_ids(users: pa.Table, n: int) -> list[int]:
    return [int(u) for u in users.column("user_id").to_numpy()[:n]]


def assert_scores(got: list, want: list, atol: float = 1e-6) -> None:
    """Scores equal to ``atol``, None (no model scored the pin) where None."""
    assert [g is None for g in got] == [w is None for w in want]
    np.testing.assert_allclose([g for g in got if g is not None],
                               [w for w in want if w is not None], atol=atol)  # fmt: skip


def test_feed_and_score_equal_the_embedded_scorer(
    client: TestClient, reference: FeedScorer, users: pa.Table
) -> None:
    for uid in [*user_ids(users, 5), 10**12]:
        got = client.get(f"/v1/feed/{uid}", params={"k": 12, "interests": [1, 2]})
        assert got.status_code == 200, got.text
        body = got.json()
        want = reference.feed(uid, 12, [1, 2])
        assert body["path"] == want.path and body["user_id"] == uid and body["k"] == 12
        assert [i["item_id"] for i in body["items"]] == want.item_ids.tolist()
        assert [i["source"] for i in body["items"]] == [i.source for i in want.items]
        assert_scores([i["score"] for i in body["items"]], [i.score for i in want.items])
        assert [i["popularity"] for i in body["items"]] == [i.popularity for i in want.items]
        fallback = want.path not in ("personalized", "personalized_defaults")
        assert all((i["score"] is None) == fallback for i in body["items"])  # never a count
        assert body["fallback"] == want.fallback
    assert client.get(f"/v1/feed/{10**12}").json()["fallback"] == "unknown_user_popular"
    uid = user_ids(users, 1)[0]
    items = reference.catalogue.ids[:7].tolist()
    got = client.post("/v1/score", json={"user_id": uid, "item_ids": items})
    assert got.status_code == 200, got.text
    np.testing.assert_allclose(got.json()["scores"], reference.score(uid, items), atol=1e-6)
    assert got.json()["model_version"] == client.get("/readyz").json()["model_version"]


def test_feed_many_equals_feed_per_user(reference: FeedScorer, users: pa.Table) -> None:
    ids = [*user_ids(users, 12), 10**12, 10**12 + 1]
    interests = [[1, 2] if i % 3 == 0 else None for i in range(len(ids))]
    many = reference.feed_many(ids, 15, interests)
    for uid, wanted, got in zip(ids, interests, many, strict=True):
        want = reference.feed(uid, 15, wanted)
        assert (got.user_id, got.path, got.replaced) == (uid, want.path, want.replaced)
        assert got.item_ids.tolist() == want.item_ids.tolist()
        assert [i.source for i in got.items] == [i.source for i in want.items]
        assert_scores([i.score for i in got.items], [i.score for i in want.items], 1e-5)
        assert [i.popularity for i in got.items] == [i.popularity for i in want.items]
    assert {f.path for f in many} >= {"unknown_user_interests", "unknown_user_popular"}


def test_concurrent_requests_are_batched_and_answered_as_alone(
    packages: dict[str, Path], store: TableStore, reference: FeedScorer, users: pa.Table
) -> None:
    """With a 300 ms batching window, 16 concurrent requests share graph runs (fewer batches
    than requests), and each answer is still that user's own feed."""
    app = create_app(Settings(packages["a"], trust=TRUST, batch_wait_ms=300, batch_max=32), store)
    client = TestClient(app)
    ids = user_ids(users, 16)
    answers: dict[int, Any] = {}

    def ask(uid: int) -> None:
        answers[uid] = client.get(f"/v1/feed/{uid}", params={"k": 8}).json()

    threads = [threading.Thread(target=ask, args=(u,)) for u in ids]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for uid in ids:
        want = reference.feed(uid, 8)
        assert [i["item_id"] for i in answers[uid]["items"]] == want.item_ids.tolist()
    text = client.get("/metrics").text
    batches = float(text.split("pinrank_feed_batch_size_count ")[1].split()[0])
    assert batches < len(ids), f"{batches} batches for {len(ids)} concurrent requests"


def test_health_metrics_and_openapi(client: TestClient, users: pa.Table) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz").json()
    assert ready["ready"] is True and ready["store"] == "ok"
    client.get(f"/v1/feed/{user_ids(users, 1)[0]}")
    client.get("/v1/feed/abc")
    text = client.get("/metrics").text
    assert 'pinrank_requests_total{endpoint="/v1/feed/{user_id}",status="200"}' in text
    assert 'pinrank_requests_total{endpoint="/v1/feed/{user_id}",status="422"}' in text
    assert 'pinrank_request_seconds_bucket{endpoint="/v1/feed/{user_id}",le="0.5"}' in text
    assert f'pinrank_model_info{{version="{ready["model_version"]}"}} 1.0' in text
    assert "package" not in ready and str(ROOT) not in text and "/tmp" not in text
    paths = json.loads(json.dumps(client.get("/openapi.json").json()["paths"]))
    assert {"/v1/feed/{user_id}", "/v1/score", "/admin/reload", "/readyz"} <= set(paths)


BIG = 2**63
BAD = [
    # (method, url, json body or raw bytes, status, fragment of error.message)
    ("GET", "/v1/feed/abc", None, 422, "path.user_id: not a plain decimal integer: 'abc'"),
    ("GET", "/v1/feed/-1", None, 422, "path.user_id: not a plain decimal integer: '-1'"),
    ("GET", f"/v1/feed/{BIG}", None, 422, "path.user_id: Input should be less than or equal to"),
    ("GET", "/v1/feed/1.5", None, 422, "path.user_id: not a plain decimal integer"),
    ("GET", "/v1/feed/7.0", None, 422, "path.user_id: not a plain decimal integer: '7.0'"),
    ("GET", "/v1/feed/1_000", None, 422, "path.user_id: not a plain decimal integer: '1_000'"),
    ("GET", "/v1/feed/007", None, 422, "path.user_id: not a plain decimal integer: '007'"),
    ("GET", "/v1/feed/1?k=0", None, 422, "query.k: Input should be greater than or equal to 1"),
    ("GET", "/v1/feed/1?k=501", None, 422, "query.k: Input should be less than or equal to 500"),
    ("GET", "/v1/feed/1?k=ten", None, 422, "query.k: not a plain decimal integer: 'ten'"),
    ("GET", "/v1/feed/1?k=NaN", None, 422, "query.k: not a plain decimal integer"),
    ("GET", "/v1/feed/1?k=5.0", None, 422, "query.k: not a plain decimal integer: '5.0'"),
    ("GET", "/v1/feed/1?k=%2B5", None, 422, "query.k: not a plain decimal integer: '+5'"),
    ("GET", "/v1/feed/1?k=600&k=2", None, 422, "query.k: given 2 times; give it once"),
    ("GET", "/v1/feed/1?kk=5", None, 422, "unknown query parameters ['kk']"),
    ("GET", "/v1/feed/1?interests=x", None, 422, "query.interests: not a plain decimal integer"),
    ("GET", "/v1/feed/1?interests=-3", None, 422, "query.interests: not a plain decimal"),
    ("GET", "/healthz/", None, 404, "Not Found"),  # no redirect built from the Host header
    ("GET", "/healthz?x=1&x=2", None, 422, "unknown query parameters ['x']"),
    ("GET", "/v1/feed/1?" + "&".join(["interests=1"] * 101), None, 422,
     "query.interests: List should have at most 100 items"),
    ("POST", "/v1/score", {"user_id": 1}, 422, "body.item_ids: Field required"),
    ("POST", "/v1/score", {"user_id": "1", "item_ids": [1]}, 422, "body.user_id: Input should be"),
    ("POST", "/v1/score", {"user_id": 1.5, "item_ids": [1]}, 422, "body.user_id: Input should be"),
    ("POST", "/v1/score", {"user_id": True, "item_ids": [1]}, 422, "body.user_id: Input should"),
    ("POST", "/v1/score", b'{"user_id": 1, "item_ids": [NaN]}', 422, "body.item_ids.0: Input"),
    ("POST", "/v1/score", b'{"user_id": NaN, "item_ids": [1]}', 422, "body.user_id: Input"),
    ("POST", "/v1/score", {"user_id": 1, "item_ids": []}, 422, "List should have at least 1 item"),
    ("POST", "/v1/score", {"user_id": 1, "item_ids": list(range(1001))}, 422,
     "body.item_ids: List should have at most 1000 items"),
    ("POST", "/v1/score", {"user_id": 1, "item_ids": [1], "k": 3}, 422,
     "body.k: Extra inputs are not permitted"),
    ("POST", "/v1/score", {"user_id": 1, "item_ids": [BIG]}, 422, "body.item_ids.0: Input should"),
    ("POST", "/v1/score", {"user_id": 1, "item_ids": [987654321]}, 404,
     "items not in the catalogue: [987654321]"),
    ("POST", "/v1/score", b"not json", 422, "body: JSON decode error: Expecting value (line 1"),
    ("POST", "/v1/score", b'{"user_id": 1,', 422, "body: JSON decode error"),
    ("POST", "/v1/score", b"\xff\xfe{}", 422, "body: not UTF-8 (byte 0)"),
    ("POST", "/v1/score", b'{"user_id": "\\ud800", "item_ids": [1]}', 422,
     "body.user_id: Input should be a valid integer"),
    ("POST", "/v1/score", b'{"user_id": 1, "item_ids": ["\\udfff"]}', 422, "body.item_ids.0"),
    ("POST", "/v1/score", b"[" * 100_000 + b"]" * 100_000, 413, "request body over"),
    ("POST", "/v1/score", b"[" * 30_000 + b"]" * 30_000, 422, "body: JSON nested too deeply"),
    ("POST", "/v1/score", [1, 2], 422, "body: Input should be a valid dictionary"),
    ("POST", "/v1/score", b"", 422, "body: Field required"),
    ("POST", "/v1/score", b"x" * 70_000, 413, "request body over 65536 bytes"),
    ("POST", "/v1/score?debug=1", {"user_id": 1, "item_ids": [1]}, 422, "unknown query param"),
    ("GET", "/v1/nothing", None, 404, "Not Found"),
    ("DELETE", "/v1/feed/1", None, 405, "Method Not Allowed"),
    ("POST", "/admin/reload", None, 401, "admin endpoints need 'Authorization: Bearer <token>'"),
    ("POST", "/admin/reload", b"{not json", 401, "admin endpoints need"),  # token first
    ("POST", "/admin/reload", b'{"package": "\\ud800"}', 401, "admin endpoints need"),
]  # fmt: skip


@pytest.mark.parametrize(("method", "url", "body", "status", "message"), BAD)
def test_bad_requests_get_a_4xx_that_names_the_problem(
    client: TestClient, method: str, url: str, body: Any, status: int, message: str
) -> None:
    kwargs: dict[str, Any] = {}
    if isinstance(body, bytes):
        kwargs = {"content": body, "headers": {"Content-Type": "application/json"}}
    elif body is not None:
        kwargs = {"json": body}
    got = client.request(method, url, **kwargs)
    assert got.status_code == status, got.text
    error = got.json()["error"]
    assert error["status"] == status and message in error["message"], error["message"]


def test_admin_reload_needs_the_token(packages: dict[str, Path], store: TableStore) -> None:
    closed = TestClient(
        create_app(Settings(packages["a"], trust=TRUST), store)
    )  # no token configured
    got = closed.post("/admin/reload", headers=AUTH)
    assert got.status_code == 403 and "disabled" in got.json()["error"]["message"]
    client = TestClient(create_app(Settings(packages["a"], trust=TRUST, admin_token=TOKEN), store))
    assert client.post("/admin/reload").status_code == 401
    assert client.post("/admin/reload").headers["www-authenticate"] == "Bearer"
    assert client.post("/admin/reload", headers={"Authorization": TOKEN}).status_code == 401
    wrong = client.post("/admin/reload", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 403 and wrong.json()["error"]["message"] == "wrong admin token"
    ok = client.post("/admin/reload", headers=AUTH, json={"package": str(packages["b"])})
    assert ok.status_code == 200, ok.text
    assert ok.json()["serving"]["path"] == str(packages["b"])
    unknown = client.post("/admin/reload", headers=AUTH, json={"packages": "x"})
    assert unknown.status_code == 422 and "body.packages: Extra inputs" in unknown.text


def test_reload_swaps_versions_and_refuses_bad_packages(
    packages: dict[str, Path], store: TableStore, users: pa.Table, tmp_path: Path
) -> None:
    client = TestClient(create_app(Settings(packages["a"], trust=TRUST, admin_token=TOKEN), store))
    uid = user_ids(users, 1)[0]
    version_a = client.get(f"/v1/feed/{uid}").json()["model_version"]
    got = client.post("/admin/reload", headers=AUTH, json={"package": str(packages["b"])})
    version_b = got.json()["serving"]["version"]
    assert got.json()["previous"]["version"] == version_a != version_b
    assert client.get(f"/v1/feed/{uid}").json()["model_version"] == version_b
    (tmp_path / "empty").mkdir()
    for bad, reason in [
        (packages["tampered"], "graphs/ranker_pairs.onnx was altered"),
        (tmp_path / "empty", "is not a model package"),
        (tmp_path / "absent", "is not a model package"),
    ]:
        got = client.post("/admin/reload", headers=AUTH, json={"package": str(bad)})
        assert got.status_code == 422 and reason in got.json()["error"]["message"], got.text
        assert client.get(f"/v1/feed/{uid}").json()["model_version"] == version_b
    metrics = client.get("/metrics").text
    assert 'pinrank_reloads_total{outcome="refused"} 3.0' in metrics
    assert 'pinrank_reloads_total{outcome="ok"} 1.0' in metrics
    # the default: the current package again
    assert client.post("/admin/reload", headers=AUTH).json()["serving"]["version"] == version_b


class GatedStore(TableStore):
    """A TableStore whose lookups of one user wait for a gate: a request held in flight."""

    def __init__(self, table: pa.Table, held: int) -> None:
        super().__init__(table)
        self.held, self.entered, self.gate = held, threading.Event(), threading.Event()

    def records(self, user_ids: Sequence[int]) -> list[dict[str, Any] | None]:
        if self.held in user_ids:
            self.entered.set()
            assert self.gate.wait(30)
        return super().records(user_ids)


def test_a_request_in_flight_finishes_on_the_model_it_started_with(
    packages: dict[str, Path], users: pa.Table
) -> None:
    uid = user_ids(users, 1)[0]
    store = GatedStore(users, held=uid)
    client = TestClient(create_app(Settings(packages["a"], trust=TRUST, admin_token=TOKEN), store))
    version_a = client.get("/readyz").json()["model_version"]
    answers: list[httpx.Response] = []
    flight = threading.Thread(target=lambda: answers.append(client.get(f"/v1/feed/{uid}")))
    flight.start()
    assert store.entered.wait(30)  # the request has read model a and waits on the store
    got = client.post("/admin/reload", headers=AUTH, json={"package": str(packages["b"])})
    assert got.status_code == 200 and got.json()["serving"]["version"] != version_a
    store.gate.set()
    flight.join(30)
    assert answers[0].status_code == 200 and answers[0].json()["model_version"] == version_a
    assert answers[0].json()["path"] in (PERSONALIZED, PERSONALIZED_DEFAULTS)
    again = client.get(f"/v1/feed/{uid}").json()
    assert again["model_version"] == got.json()["serving"]["version"]


class FailingStore(TableStore):
    """Fails every lookup with a given StoreError reason."""

    def __init__(self, table: pa.Table, reason: str) -> None:
        super().__init__(table)
        self.reason = reason

    def records(self, user_ids: Sequence[int]) -> list[dict[str, Any] | None]:
        raise StoreError(self.reason, f"simulated {self.reason}")

    def ping(self) -> None:
        raise StoreError(self.reason, f"simulated {self.reason}")


def test_a_failed_store_degrades_feeds_never_the_service(
    packages: dict[str, Path], users: pa.Table
) -> None:
    client = TestClient(
        create_app(Settings(packages["a"], trust=TRUST), FailingStore(users, "timeout"))
    )
    uid = user_ids(users, 1)[0]
    for _ in range(3):
        got = client.get(f"/v1/feed/{uid}", params={"k": 20})
        assert got.status_code == 200
        body = got.json()
        assert body["path"] == ERROR and body["fallback"] == "store_timeout"
        assert len(body["items"]) == 20 and {i["source"] for i in body["items"]} == {"popular"}
    score = client.post(
        "/v1/score", json={"user_id": uid, "item_ids": [body["items"][0]["item_id"]]}
    )
    assert score.status_code == 503 and "user store timeout" in score.json()["error"]["message"]
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["store"].startswith("timeout")
    assert 'pinrank_fallbacks_total{reason="store_timeout"} 3.0' in client.get("/metrics").text


def test_reload_under_load_loses_no_request(
    packages: dict[str, Path], store: TableStore, users: pa.Table, port: int
) -> None:
    """A real server: 8 clients send feeds for 4 s while the package is reloaded 4 times."""
    app = create_app(Settings(packages["a"], trust=TRUST, admin_token=TOKEN), store)
    server = uvicorn.Server(uvicorn.Config(app, port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "server did not start"
        time.sleep(0.05)
    ids = [*user_ids(users, 50), 10**12]
    stop, results = threading.Event(), []
    lock = threading.Lock()

    def hammer(seed: int) -> None:
        rng = np.random.default_rng(seed)
        with httpx.Client(base_url=base, timeout=30) as http:
            while not stop.is_set():
                r = http.get(f"/v1/feed/{ids[rng.integers(len(ids))]}", params={"k": 10})
                with lock:
                    results.append((r.status_code, r.json().get("model_version")))

    clients = [threading.Thread(target=hammer, args=(s,)) for s in range(8)]
    for c in clients:
        c.start()
    reloads = []
    with httpx.Client(base_url=base, timeout=60, headers=AUTH) as admin:
        for target in ["b", "a", "b", "a"]:
            time.sleep(0.8)
            reloads.append(admin.post("/admin/reload", json={"package": str(packages[target])}))
    time.sleep(0.5)
    stop.set()
    for c in clients:
        c.join(60)
    server.should_exit = True
    thread.join(30)
    assert [r.status_code for r in reloads] == [200] * 4, [r.text for r in reloads]
    assert len(results) > 50
    assert {s for s, _ in results} == {200}
    versions = {r.json()["serving"]["version"] for r in reloads}
    assert len(versions) == 2 and {v for _, v in results} <= versions
    assert len({v for _, v in results}) == 2  # requests were served by both packages


def test_the_service_never_imports_torch(
    packages: dict[str, Path], users_path: Path, key_files: dict[str, Path]
) -> None:
    code = f"""
        import sys
        for name in ("torch", "torchrec", "pytorch_lightning", "lightning", "hydra"):
            sys.modules[name] = None  # any import of them now raises ImportError
        from fastapi.testclient import TestClient
        from serve.app import Settings, create_app
        from pinrank.serving.redis_store import RedisStore
        from pinrank.serving.signing import Trust
        from pinrank.serving.store import TableStore
        store = TableStore.from_parquet({str(users_path)!r})
        trust = Trust.from_files([{str(key_files["public"])!r}])
        app = create_app(Settings({str(packages["a"])!r}, trust=trust), store)
        r = TestClient(app).get("/v1/feed/1")
        assert r.status_code == 200, r.text
        print("ok", r.json()["path"])
    """  # fmt: skip
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0 and proc.stdout.startswith("ok"), proc.stderr[-3000:]


def test_the_embedded_store_memory_maps_an_arrow_snapshot(users: pa.Table, tmp_path: Path) -> None:
    """``TableStore.from_path`` of an ``.arrow`` file answers as the Parquet one, and its rows
    stay memory-mapped: loading it allocates no Arrow memory for them."""
    path = tmp_path / "users.arrow"
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, users.schema) as writer:
        writer.write_table(users, max_chunksize=100)
    before = pa.total_allocated_bytes()
    mapped = TableStore.from_path(path)
    allocated = pa.total_allocated_bytes() - before
    assert allocated < users.nbytes / 10, f"{allocated} bytes copied of {users.nbytes}"
    ids = np.concatenate([users.column("user_id").to_numpy()[::7], [10**12]]).astype(np.int64)
    table = TableStore(users)
    assert mapped.get(ids).to_pylist() == table.get(ids).to_pylist()
    assert mapped.row(int(ids[0])) == table.row(int(ids[0])) and mapped.row(10**12) is None


def test_a_failing_batch_answers_500_and_the_worker_lives_on(
    packages: dict[str, Path], store: TableStore, users: pa.Table, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = create_app(Settings(packages["a"], trust=TRUST, batch_workers=1), store)
    client = TestClient(app, raise_server_exceptions=False)  # answer as a server would
    scorer = app.state.service.model.scorer
    uid = user_ids(users, 1)[0]
    with monkeypatch.context() as m:
        m.setattr(scorer, "feed_many", lambda *a, **kw: (_ for _ in ()).throw(RuntimeError("bug")))
        got = client.get(f"/v1/feed/{uid}")
        assert (
            got.status_code == 500
            and got.json()["error"]["message"] == "internal error: RuntimeError"
        )
    assert client.get(f"/v1/feed/{uid}").status_code == 200  # the one worker survived


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        ({}, "Content-Type must be application/json (got none)"),
        (
            {"Content-Type": "text/plain"},
            "Content-Type must be application/json (got 'text/plain')",
        ),
        ({"Content-Type": "application/x-www-form-urlencoded"}, "must be application/json"),
    ],
)
def test_a_body_without_the_json_content_type_gets_415(
    client: TestClient, headers: dict[str, str], message: str
) -> None:
    got = client.post("/v1/score", content=b'{"user_id": 1, "item_ids": [1]}', headers=headers)
    assert got.status_code == 415 and message in got.json()["error"]["message"], got.text


def test_health_endpoints_answer_head(client: TestClient) -> None:
    for path in ("/healthz", "/readyz"):
        got = client.head(path)
        assert got.status_code == 200 and got.content == b""


def test_errors_echoing_input_always_encode(client: TestClient) -> None:
    """A lone surrogate in the body: a 422 whose JSON escapes it, never a 500."""
    got = client.post(
        "/v1/score",
        content=b'{"user_id": "\\ud800", "item_ids": [1]}',
        headers={"Content-Type": "application/json"},
    )
    assert got.status_code == 422
    assert b"\\ud800" in got.content  # escaped in the JSON text
    json.loads(got.content)


def test_metrics_count_413_405_and_500(packages: dict[str, Path], store: TableStore) -> None:
    app = create_app(Settings(packages["a"], trust=TRUST, max_body_bytes=100), store)

    @app.get("/boom")
    def boom() -> None:
        raise RuntimeError("a bug")

    client = TestClient(app, raise_server_exceptions=False)
    assert client.post("/v1/score", content=b"x" * 200).status_code == 413
    assert client.delete("/v1/feed/1").status_code == 405
    assert client.get("/boom").status_code == 500
    text = client.get("/metrics").text
    assert 'pinrank_requests_total{endpoint="/v1/score",status="413"} 1.0' in text
    assert 'pinrank_requests_total{endpoint="/v1/feed/{user_id}",status="405"} 1.0' in text
    assert 'pinrank_requests_total{endpoint="/boom",status="500"} 1.0' in text
    assert 'pinrank_request_seconds_count{endpoint="/boom"} 1.0' in text
    assert 'pinrank_request_seconds_count{endpoint="/v1/score"} 1.0' in text


@pytest.mark.parametrize("batch_max", [8, 1])
def test_overload_is_shed_with_503_and_admitted_requests_stay_bounded(
    packages: dict[str, Path],
    store: TableStore,
    users: pa.Table,
    monkeypatch: pytest.MonkeyPatch,
    batch_max: int,
) -> None:
    """A scorer slowed to 0.2 s per graph run, 40 concurrent requests, at most 4 waiting and a
    300 ms deadline: the rest get 503 with Retry-After at once or at the deadline, counted in
    /metrics; /healthz answers meanwhile; nothing else fails."""
    settings = Settings(
        packages["a"], trust=TRUST, batch_max=batch_max, batch_workers=1, max_queue=4,
        queue_deadline_ms=300,
    )  # fmt: skip
    app = create_app(settings, store)
    client = TestClient(app)
    scorer = app.state.service.model.scorer
    slow_many, slow_one = scorer.feed_many, scorer.feed

    def sleepy_many(*a: Any, **kw: Any) -> Any:
        time.sleep(0.2)
        return slow_many(*a, **kw)

    def sleepy_one(*a: Any, **kw: Any) -> Any:
        time.sleep(0.2)
        return slow_one(*a, **kw)

    monkeypatch.setattr(scorer, "feed_many", sleepy_many)
    monkeypatch.setattr(scorer, "feed", sleepy_one)
    uid = user_ids(users, 1)[0]
    answers: list[Any] = []
    health: list[float] = []

    def ask() -> None:
        t0 = time.perf_counter()
        r = client.get(f"/v1/feed/{uid}", params={"k": 5})
        answers.append(
            (r.status_code, r.headers.get("retry-after"), r.json(), time.perf_counter() - t0)
        )

    threads = [threading.Thread(target=ask) for _ in range(40)]
    for t in threads:
        t.start()
    for _ in range(5):
        t0 = time.perf_counter()
        assert client.get("/healthz").status_code == 200
        health.append(time.perf_counter() - t0)
    for t in threads:
        t.join(60)
    codes = [a[0] for a in answers]
    assert set(codes) <= {200, 503} and codes.count(200) >= 1 and codes.count(503) >= 1
    for status, retry, body, _ in answers:
        if status == 503:
            assert retry == "1" and "overloaded" in body["error"]["message"]
        else:
            assert len(body["items"]) == 5
    text = client.get("/metrics").text
    shed = sum(
        float(line.split()[-1])
        for line in text.splitlines()
        if line.startswith("pinrank_shed_total{")
    )
    assert shed == codes.count(503)
    assert 'pinrank_requests_total{endpoint="/v1/feed/{user_id}",status="503"}' in text


def test_half_sent_headers_and_bodies_are_cut_off_by_the_server(
    packages: dict[str, Path], users_path: Path, key_files: dict[str, Path], port: int
) -> None:
    """The real server (uvicorn with the timed protocol): 200 connections that never finish
    their headers are closed within the header timeout; a body that never arrives gets 408."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "serve", "run", str(packages["a"]), "--users",
         str(users_path), "--port", str(port), "--trusted-key", str(key_files["public"]),
         "--header-timeout-s", "1", "--body-timeout-s", "1"],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_until_up(f"http://127.0.0.1:{port}/healthz", proc, detail=lambda: "no server")
        socks = []
        for _ in range(200):
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # no blank line
            socks.append(s)
        t0 = time.monotonic()
        closed = 0
        for s in socks:
            s.settimeout(max(3.0 - (time.monotonic() - t0), 0.1))
            try:
                closed += s.recv(1024) == b""
            except (ConnectionResetError, TimeoutError):
                closed += 0
            finally:
                s.close()
        assert closed == 200, f"{200 - closed} half-open connections still open after 3 s"
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(b"POST /v1/score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      b"Content-Length: 100\r\n\r\n{\"user_id\"")  # fmt: skip
            s.settimeout(5)
            reply = s.recv(4096)
        assert reply.startswith(b"HTTP/1.1 408"), reply[:200]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as r:
            assert r.status == 200  # the server lives on
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_a_list_over_its_limit_is_refused_not_padded(
    packages: dict[str, Path], users: pa.Table
) -> None:
    """A stored user whose interest bag (no max_len) holds 50,000 values is served with that
    column replaced by null, named in ``replaced``; the feed equals the one of the same user with
    the column null."""
    from pinrank.features.spec import LIST_LIMIT

    column = "seen_interests"
    bags = users.column(column).to_pylist()
    uid = int(users.column("user_id")[0].as_py())
    long_bag, null_bag = bags.copy(), bags.copy()
    long_bag[0], null_bag[0] = list(range(50_000)), None
    kind = users.schema.field(column).type
    index = users.schema.get_field_index(column)
    long_users = users.set_column(index, column, pa.array(long_bag, kind))
    null_users = users.set_column(index, column, pa.array(null_bag, kind))
    with TestClient(create_app(Settings(packages["a"], trust=TRUST), TableStore(long_users))) as c:
        got = c.get(f"/v1/feed/{uid}", params={"k": 10}).json()
        many = [c.get(f"/v1/feed/{u}", params={"k": 10}) for u in user_ids(users, 8)]
    assert all(r.status_code == 200 for r in many)
    assert got["path"] == "personalized_defaults" and got["replaced"] == {column: "too_long"}
    with TestClient(create_app(Settings(packages["a"], trust=TRUST), TableStore(null_users))) as c:
        want = c.get(f"/v1/feed/{uid}", params={"k": 10}).json()
    assert got["items"] == want["items"] and LIST_LIMIT < 50_000
