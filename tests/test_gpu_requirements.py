"""The GPU requirement set (requirements/gpu.txt, docs/gpu.md) as files, offline, and
``--gpu-index`` with the faiss that set installs (faiss-cpu): a clear error, not a quiet CPU search.

The set's resolution and CUDA majors are checked by scripts/check-gpu-requirements.sh (CI), which
needs the package registry; these tests need nothing."""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import faiss
import pytest

from pinrank.serving.candidates import CandidateSource, check_gpu_faiss

ROOT = Path(__file__).resolve().parents[1]
PIN = re.compile(r"([A-Za-z0-9][A-Za-z0-9._-]*)(\[[A-Za-z0-9_,\s-]*\])?==([A-Za-z0-9.+!_-]+)")


def pins(path: Path) -> dict[str, str]:
    """``{normalised name: version}`` of a requirements file; every line an exact pin."""
    found = {}
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if line:
            m = PIN.fullmatch(line)
            assert m, f"{path.name}: {line!r} is not an exact pin"
            found[re.sub(r"[-_.]+", "-", m[1]).lower()] = m[3]
    return found


def setup_filter() -> str:
    """The regex scripts/setup.sh drops from cpu.txt on GPU machines (the check script reads it
    the same way)."""
    text = (ROOT / "scripts" / "setup.sh").read_text()
    (found,) = re.findall(r"grep -v -E '([^']*)' requirements/cpu\.txt", text)
    return found


def test_gpu_set_keeps_faiss_cpu() -> None:
    gpu = pins(ROOT / "requirements" / "gpu.txt")
    cpu = pins(ROOT / "requirements" / "cpu.txt")
    assert set(gpu) == {"torch", "fbgemm-gpu", "onnxruntime-gpu"}
    assert not [n for n in gpu if n.startswith("faiss")]
    lines = (ROOT / "requirements" / "cpu.txt").read_text().splitlines()
    kept = {line.split("==")[0] for line in lines if "==" in line}
    kept -= {line.split("==")[0] for line in lines if re.search(setup_filter(), line)}
    assert "faiss-cpu" in kept
    assert not {"torch", "fbgemm-gpu-cpu", "onnxruntime"} & kept
    assert gpu["torch"] == cpu["torch"]
    assert gpu["onnxruntime-gpu"] == cpu["onnxruntime"]
    assert gpu["fbgemm-gpu"] == cpu["fbgemm-gpu-cpu"]


def test_gpu_index_with_cpu_faiss_is_a_clear_error() -> None:
    if hasattr(faiss, "StandardGpuResources"):
        pytest.skip("this faiss has GPU support")
    with pytest.raises(ValueError, match=r"--gpu-index needs a faiss build with GPU support"):
        check_gpu_faiss()
    # before the package is read: the wiring of gpu_index in CandidateSource
    with pytest.raises(ValueError, match=r"--gpu-index .*faiss-cpu"):
        CandidateSource(None, None, None, None, gpu_index=True)  # type: ignore[arg-type]


def test_gpu_index_needs_a_gpu_faiss_sees() -> None:
    blind = SimpleNamespace(
        __version__="1.15.1", StandardGpuResources=object, get_num_gpus=lambda: 0
    )
    with pytest.raises(ValueError, match=r"--gpu-index needs a GPU that faiss sees"):
        check_gpu_faiss(blind)
    check_gpu_faiss(SimpleNamespace(**{**vars(blind), "get_num_gpus": lambda: 1}))


def test_the_readme_version_table_matches_the_pinned_sets() -> None:
    """README.md's CPU and CUDA rows name the versions the lock files pin."""
    readme = (ROOT / "README.md").read_text().splitlines()
    cpu_row = next(line for line in readme if line.startswith("| CPU "))
    cuda_row = next(line for line in readme if line.startswith("| CUDA "))
    cpu, gpu = pins(ROOT / "requirements" / "cpu.txt"), pins(ROOT / "requirements" / "gpu.txt")
    torchrec = pins(ROOT / "requirements" / "torchrec.txt")["torchrec"]
    assert cpu_row.split("|")[2].strip().startswith(cpu["torch"]), cpu_row
    for name in ("fbgemm-gpu-cpu", "faiss-cpu", "onnxruntime"):
        assert f"{name} {cpu[name]}" in cpu_row, (name, cpu_row)
    assert cuda_row.split("|")[2].strip().startswith(gpu["torch"]), cuda_row
    assert f"fbgemm-gpu {gpu['fbgemm-gpu']}" in cuda_row
    assert f"onnxruntime-gpu[cuda,cudnn] {gpu['onnxruntime-gpu']}" in cuda_row
    assert f"faiss-cpu {cpu['faiss-cpu']}" in cuda_row and "faiss-gpu" not in "".join(gpu)
    assert f"| {torchrec} |" in cpu_row and f"| {torchrec} |" in cuda_row
    assert "CUDA 13" in cuda_row
