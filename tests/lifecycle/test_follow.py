"""The service follows the registry's ``production`` alias (``serve run registry:production``):
a promotion reaches the running service with no failed request among concurrent feeds, and a
registry that goes away leaves it serving."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pyarrow as pa
from package_fixtures import TRUST, free_port, wait_until_up

from pinrank.lifecycle.registry import Registry


def test_a_promotion_reaches_the_running_service_with_no_failed_request(
    package_dir: Path, interest_package_dir: Path, users: pa.Table, users_path: Path,
    key_files: dict[str, Path], tmp_path: Path,
) -> None:  # fmt: skip
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    registry = Registry(uri)
    first = registry.register(package_dir, TRUST)
    registry.promote(first.number)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = (tmp_path / "server.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "pinrank.cli", "serve", "run", "registry:production",
         "--tracking-uri", uri,
         "--registry-cache", str(tmp_path / "cache"), "--registry-poll-s", "0.5",
         "--users", str(users_path), "--port", str(port),
         "--trusted-key", str(key_files["public"])],
        cwd=tmp_path, env={**os.environ, "PYTHONWARNINGS": "ignore"},
        stdout=subprocess.DEVNULL, stderr=log,
    )  # fmt: skip
    try:
        wait_until_up(
            f"{base}/readyz", proc, 180, lambda: (tmp_path / "server.log").read_text()[-3000:]
        )
        assert httpx.get(f"{base}/readyz").json()["model_version"] == first.package_version
        ids = [*users.column("user_id").to_numpy()[:50].tolist(), 10**12]
        stop, results, lock = threading.Event(), [], threading.Lock()

        def hammer(seed: int) -> None:
            rng = np.random.default_rng(seed)
            with httpx.Client(base_url=base, timeout=30) as http:
                while not stop.is_set():
                    r = http.get(f"/v1/feed/{ids[rng.integers(len(ids))]}", params={"k": 10})
                    with lock:
                        results.append((r.status_code, r.json().get("model_version")))

        clients = [threading.Thread(target=hammer, args=(s,)) for s in range(6)]
        for c in clients:
            c.start()
        time.sleep(1.0)
        second = registry.register(interest_package_dir, TRUST)
        registry.promote(second.number)
        deadline = time.monotonic() + 90
        while httpx.get(f"{base}/readyz").json()["model_version"] != second.package_version:
            assert time.monotonic() < deadline, "the service did not follow the promotion"
            time.sleep(0.2)
        time.sleep(1.0)
        # the registry goes away: the service keeps serving what it serves
        (tmp_path / "mlflow.db").rename(tmp_path / "gone.db")
        time.sleep(1.5)
        stop.set()
        for c in clients:
            c.join(60)
        assert len(results) > 50
        assert {s for s, _ in results} == {200}, [s for s, _ in results if s != 200][:5]
        served = [v for _, v in results]
        assert set(served) == {first.package_version, second.package_version}
        assert served[-1] == second.package_version  # no going back
        assert httpx.get(f"{base}/readyz").json()["model_version"] == second.package_version
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()
