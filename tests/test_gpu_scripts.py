"""The prepared GPU scripts (benchmarks/gpu/) run on CPU too: what a lent GPU machine will run is
exercised here, parity checks included, on the test package with small sizes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _serving(
    package_dir: Path, key_files: dict[str, Path], out: Path, *args: str
) -> subprocess.CompletedProcess[str]:
    """benchmarks/gpu/serving.py on CPU on the test package, writing to ``out``."""
    return subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu" / "serving.py"), "--device", "cpu",
         "--package", str(package_dir), "--trusted-key", str(key_files["public"]),
         "--out", str(out), *args],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip


def test_gpu_serving_script_runs_on_cpu_with_parity(
    package_dir: Path, key_files: dict[str, Path], tmp_path: Path
) -> None:
    proc = _serving(package_dir, key_files, tmp_path, "--batch", "2048", "--pins", "3000",
                    "--queries", "64", "--k", "10", "--peak-n", "128")  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((tmp_path / "gpu_serving.json").read_text())
    assert result["device"]["type"] == "cpu"
    pairs = result["ranker_pairs"]
    assert pairs["batch"] == 2048 and pairs["matmul_flops_per_candidate"] > 0
    assert pairs["float32"]["max_abs_diff_vs_onnxruntime_cpu"] <= 1e-5
    assert pairs["float32"]["parity"] and pairs["float32"]["candidates_per_s"] > 0
    assert 0 < pairs["bfloat16"]["max_abs_diff_vs_onnxruntime_cpu"] <= 2e-2  # bf16 rounds
    topk = result["topk"]
    assert topk["pins"] == 3000 and topk["same_ids_as_cpu_float64"] and topk["parity"]
    assert "ranker_pairs float32" in proc.stdout and "exact top-10" in proc.stdout


def test_gpu_serving_script_fails_on_a_parity_miss(
    package_dir: Path, key_files: dict[str, Path], tmp_path: Path
) -> None:
    proc = _serving(package_dir, key_files, tmp_path, "--batch", "512", "--pins", "500",
                    "--queries", "16", "--k", "5", "--peak-n", "64", "--bf16-tol", "0")  # fmt: skip
    assert proc.returncode == 1 and "FAILED: a parity check" in proc.stderr
    assert "bfloat16" in proc.stdout and "FAIL" in proc.stdout


def test_gpu_run_script_trains_packages_verifies_and_serves_on_cpu(tmp_path: Path) -> None:
    """benchmarks/gpu/run.sh end to end with TRAINER=cpu DEVICE=cpu on a small data set: the
    throughput runs, both models trained, the package exported and verified, the serving
    checks with parity."""
    tiny = [
        "data.source.generator.n_users=300",
        "data.source.generator.n_items=200",
        "data.source.generator.n_events=8000",
        "data.datamodule.batch_size=256",
        "data.datamodule.num_workers=0",
        f"paths.data_dir={tmp_path}/data",
    ]
    env = {
        **os.environ,
        "PYTHON": sys.executable,
        "TRAINER": "cpu",
        "DEVICE": "cpu",
        "STEPS": "3",
        "BATCH": "1024",
        "PINS": "2000",
        "OUT": str(tmp_path / "out"),
        "WORK": str(tmp_path / "work"),
        "EXTRA": " ".join(tiny),
        "PYTHONWARNINGS": "ignore",
    }
    proc = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu" / "run.sh")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    out = tmp_path / "out"
    sets = json.loads((out / "train_throughput.json").read_text())["sets"]
    assert set(sets) == {"cpu"}
    rows = sets["cpu"]["results"]
    assert {r["model"] for r in rows} == {"two_tower", "wide_deep"}
    assert all(r["sparse_arch"] == "torch" and r["impressions"] == 3 * 256 for r in rows)
    assert "OK" in (out / "verify.log").read_text()
    serving = json.loads((out / "gpu_serving.json").read_text())
    assert serving["ranker_pairs"]["float32"]["parity"] and serving["topk"]["parity"]
