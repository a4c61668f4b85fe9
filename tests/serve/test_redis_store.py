"""The Redis user store against a real ``redis-server`` on loopback: it answers as the embedded
TableStore does, keeps malformed values visible to ``conform``, and a slow, dead or corrupt
store degrades the service's feeds to a labelled fallback within the store's deadline."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from fastapi.testclient import TestClient
from package_fixtures import TRUST

from pinrank.serving.feed import ERROR, PERSONALIZED, PERSONALIZED_DEFAULTS
from pinrank.serving.package import load_package
from pinrank.serving.redis_store import RedisStore, client, write_users
from pinrank.serving.runtime import OnnxBackend
from pinrank.serving.scorer import FeedScorer
from pinrank.serving.store import StoreError, TableStore
from serve.app import Settings, create_app

TIMEOUT_S = 0.1


@pytest.fixture(scope="module")
def redis_users(redis_server: Any, users: pa.Table) -> RedisStore:
    n = write_users(client(redis_server.url, timeout_s=10), users, prefix="test:user:")
    assert n == users.num_rows
    return RedisStore.connect(redis_server.url, prefix="test:user:", timeout_s=TIMEOUT_S)


def test_redis_store_answers_as_the_table_store(redis_users: RedisStore, users: pa.Table) -> None:
    table = TableStore(users)
    ids = np.concatenate([users.column("user_id").to_numpy()[:50], [10**12, -5]]).astype(np.int64)
    assert redis_users.get(ids).to_pylist() == table.get(ids).to_pylist()
    assert redis_users.known(ids).tolist() == table.known(ids).tolist()
    for uid in [*ids[:5].tolist(), 10**12]:
        assert redis_users.row(uid) == table.row(uid)
    assert redis_users.get(np.empty(0, np.int64)).num_rows == 0
    redis_users.ping()


def test_feeds_from_redis_equal_feeds_from_the_table_store(
    redis_users: RedisStore, users: pa.Table, package_dir: Path
) -> None:
    package = load_package(package_dir, TRUST)
    backend = OnnxBackend(package, threads=1)
    via_redis = FeedScorer(package, redis_users, backend)
    via_table = FeedScorer(package, TableStore(users), backend)
    for uid in users.column("user_id").to_numpy()[:10].tolist():
        a, b = via_redis.feed(uid, 20), via_table.feed(uid, 20)
        assert a.path == b.path and a.path in (PERSONALIZED, PERSONALIZED_DEFAULTS)
        assert a.item_ids.tolist() == b.item_ids.tolist() and a.replaced == b.replaced


def test_malformed_and_corrupt_records(
    redis_server: Any, redis_users: RedisStore, users: pa.Table, package_dir: Path
) -> None:
    """A wrong type in a record is reported ``malformed`` and defaulted (the same policy as
    every store); a record that is not a JSON object is ``corrupt``: a labelled fallback."""
    raw = client(redis_server.url, timeout_s=10)
    row = {k: v for k, v in users.slice(0, 1).to_pylist()[0].items() if k != "user_id"}
    raw.set("test:user:777000001", json.dumps(row | {"age": "abc"}))
    raw.set("test:user:777000002", b"\xff not json")
    raw.set("test:user:777000003", "[1, 2]")
    assert redis_users.row(777000001)["age"] == "abc"  # handed over raw
    assert redis_users.get(np.array([777000001])).column("age").to_pylist() == [None]
    package = load_package(package_dir, TRUST)
    scorer = FeedScorer(package, redis_users, OnnxBackend(package, threads=1))
    feed = scorer.feed(777000001, 10)
    assert feed.path == PERSONALIZED_DEFAULTS and feed.replaced.get("age") == "malformed"
    for uid in (777000002, 777000003):
        with pytest.raises(StoreError) as err:
            redis_users.row(uid)
        assert err.value.reason == "corrupt" and f"test:user:{uid}" in str(err.value)
        feed = scorer.feed(uid, 10)
        assert feed.path == ERROR and feed.fallback == "store_corrupt" and len(feed.items) == 10


def test_paused_then_dead_redis_degrades_feeds_within_the_deadline(
    redis_server: Any, users: pa.Table, packages: dict[str, Path]
) -> None:
    """SIGSTOP (a hung server): feeds come back as ``store_timeout`` fallbacks in about the
    store's deadline; SIGCONT: personalized again; killed: ``store_unavailable``. The service
    stays ready throughout and counts the fallbacks by reason. Runs last in this module."""
    write_users(client(redis_server.url, timeout_s=10), users, prefix="down:user:")
    store = RedisStore.connect(redis_server.url, prefix="down:user:", timeout_s=TIMEOUT_S)
    http = TestClient(create_app(Settings(packages["a"], trust=TRUST), store))
    uid = int(users.column("user_id").to_numpy()[0])
    assert http.get(f"/v1/feed/{uid}").json()["fallback"] is None
    os.kill(redis_server.proc.pid, signal.SIGSTOP)
    try:
        for _ in range(3):
            t0 = time.perf_counter()
            got = http.get(f"/v1/feed/{uid}", params={"k": 15})
            seconds = time.perf_counter() - t0
            assert got.status_code == 200 and got.json()["fallback"] == "store_timeout", got.text
            assert len(got.json()["items"]) == 15
            assert seconds < 20 * TIMEOUT_S, f"a feed waited {seconds:.2f} s on a hung store"
        ready = http.get("/readyz")
        assert ready.status_code == 200 and ready.json()["store"].startswith("timeout")
    finally:
        os.kill(redis_server.proc.pid, signal.SIGCONT)
    assert http.get(f"/v1/feed/{uid}").json()["fallback"] is None
    redis_server.stop()
    got = http.get(f"/v1/feed/{uid}")
    assert got.status_code == 200 and got.json()["fallback"] == "store_unavailable"
    assert http.get("/readyz").json()["store"].startswith("unavailable")
    metrics = http.get("/metrics").text
    assert 'pinrank_fallbacks_total{reason="store_timeout"} 3.0' in metrics
    assert 'pinrank_fallbacks_total{reason="store_unavailable"} 1.0' in metrics
