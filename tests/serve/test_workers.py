"""Feed scoring in worker processes (``scoring="processes"``): the same feeds as threads, reloads
reach every process before they serve, a killed or hung process costs one batch (503 with
Retry-After, counted) and is restarted, stores travel as recipes, and a replaced model is
freed (the heap is frozen for the garbage collector, so a reference cycle would leak it)."""

from __future__ import annotations

import gc
import os
import pickle
import signal
import time
import weakref
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pytest
from fastapi.testclient import TestClient
from package_fixtures import TRUST

from pinrank.serving.redis_store import RedisStore
from pinrank.serving.store import TableStore
from serve.app import Settings, create_app
from serve.workers import ScoringProcess

TOKEN = "test-admin-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def ids(users: pa.Table, n: int) -> list[int]:
    return [int(u) for u in users.column("user_id").to_numpy()[:n]]


@pytest.fixture(scope="module")
def store(users_path: Path) -> TableStore:
    return TableStore.from_path(users_path)


@pytest.fixture(scope="module")
def threads(packages: dict[str, Path], store: TableStore) -> Iterator[TestClient]:
    with TestClient(create_app(Settings(packages["a"], trust=TRUST), store)) as client:
        yield client


def processes_app(packages: dict[str, Path], store: TableStore, **kw: object) -> TestClient:
    settings = Settings(
        packages["a"], trust=TRUST, admin_token=TOKEN, scoring="processes", batch_wait_ms=0, **kw
    )
    return TestClient(create_app(settings, store))


def workers(client: TestClient) -> list[ScoringProcess]:
    executors = client.app.state.service.batcher.executors  # type: ignore[attr-defined]
    assert all(isinstance(e, ScoringProcess) for e in executors)
    return executors


def feed(client: TestClient, user: int, **params: object) -> dict[str, object]:
    r = client.get(f"/v1/feed/{user}", params={"k": 10, **params})
    assert r.status_code == 200, r.text
    return r.json()


def test_processes_serve_the_feeds_threads_serve_and_reloads_reach_them(
    packages: dict[str, Path], store: TableStore, users: pa.Table, threads: TestClient
) -> None:
    asked = [*ids(users, 12), 10**12]  # an unknown user too: the fallback path
    with processes_app(packages, store) as client:
        pids = [w.pid for w in workers(client)]
        assert len(set(pids)) == 2 and os.getpid() not in pids
        for u in asked:
            assert feed(client, u) == feed(threads, u)
        assert feed(client, asked[0], interests=[2, 3]) == feed(threads, asked[0], interests=[2, 3])
        r = client.post("/admin/reload", json={"package": str(packages["b"])}, headers=AUTH)
        assert r.status_code == 200, r.text
        version_b = r.json()["serving"]["version"]
        got = feed(client, asked[0])
        assert got["model_version"] == version_b
        assert got["items"] == feed(threads, asked[0])["items"]  # same graphs, other manifest
        # a refused package (tampered) leaves b serving, and every process alive
        r = client.post("/admin/reload", json={"package": str(packages["tampered"])}, headers=AUTH)
        assert r.status_code == 422 and feed(client, asked[0])["model_version"] == version_b
        assert [w.pid for w in workers(client)] == pids  # no process was lost on the way
    assert not any(p.is_alive() for p in (w.process for w in workers(client)))  # closed at exit


def metric(client: TestClient, line: str) -> float:
    for ln in client.get("/metrics").text.splitlines():
        if ln.startswith(line):
            return float(ln.split()[-1])
    return 0.0


def test_a_killed_scoring_process_costs_one_batch_and_is_restarted(
    packages: dict[str, Path], store: TableStore, users: pa.Table
) -> None:
    user = ids(users, 1)[0]
    with processes_app(packages, store, batch_workers=1) as client:
        expected = feed(client, user)
        (worker,) = workers(client)
        old = worker.pid
        assert old is not None
        os.kill(old, signal.SIGKILL)
        worker.process.join(10)
        r = client.get(f"/v1/feed/{user}", params={"k": 10})
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        assert "worker_lost" in r.json()["error"]["message"]
        assert feed(client, user) == expected  # the new process loads the model on demand
        assert worker.pid != old and worker.process.is_alive()
        assert metric(client, 'pinrank_shed_total{reason="worker_lost"}') == 1
        assert metric(client, 'pinrank_worker_restarts_total{cause="died"}') == 1


def test_a_hung_scoring_process_is_replaced_after_the_timeout(
    packages: dict[str, Path], store: TableStore, users: pa.Table
) -> None:
    user = ids(users, 1)[0]
    with processes_app(packages, store, batch_workers=1, score_timeout_s=1.0) as client:
        expected = feed(client, user)
        (worker,) = workers(client)
        old = worker.pid
        assert old is not None
        os.kill(old, signal.SIGSTOP)  # alive, answering nothing
        t0 = time.monotonic()
        r = client.get(f"/v1/feed/{user}", params={"k": 10})
        assert r.status_code == 503 and "worker_lost" in r.text
        assert time.monotonic() - t0 < 15  # the timeout, the stop grace, the new process
        assert feed(client, user) == expected and worker.pid != old
        assert metric(client, 'pinrank_worker_restarts_total{cause="timeout"}') == 1


def test_stores_travel_to_processes_as_recipes(users_path: Path, users: pa.Table) -> None:
    from_file = pickle.loads(pickle.dumps(TableStore.from_path(users_path)))
    assert from_file.source == users_path.resolve() and from_file.table.equals(
        TableStore.from_path(users_path).table
    )
    in_memory = pickle.loads(pickle.dumps(TableStore(users)))
    assert in_memory.source is None and in_memory.table.num_rows == users.num_rows

    class Custom(TableStore):
        pass

    with pytest.raises(TypeError, match="Custom does not say how to open it"):
        pickle.dumps(Custom(users))
    redis = RedisStore.connect("redis://127.0.0.1:1/0", "p:", 0.2)  # connects lazily
    again = pickle.loads(pickle.dumps(redis))
    assert isinstance(again, RedisStore) and again.prefix == "p:"
    with pytest.raises(TypeError, match=r"RedisStore\.connect"):
        pickle.dumps(RedisStore(redis.client))


def test_a_replaced_model_is_freed_although_the_heap_is_frozen(
    packages: dict[str, Path], store: TableStore
) -> None:
    settings = Settings(packages["a"], trust=TRUST, admin_token=TOKEN)
    with TestClient(create_app(settings, store)) as client:
        service = client.app.state.service  # type: ignore[attr-defined]
        assert gc.get_freeze_count() > 0  # the lifespan froze the heap
        before = weakref.ref(service.model.scorer)
        r = client.post("/admin/reload", json={"package": str(packages["b"])}, headers=AUTH)
        assert r.status_code == 200
        assert before() is None  # reference counting freed it: no cycle kept it frozen
    gc.unfreeze()
