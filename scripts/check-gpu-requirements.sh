#!/usr/bin/env bash
# CI check (docs/gpu.md): resolve the GPU requirement set, as `make setup` builds it where nvidia-smi
# finds a GPU (requirements/gpu.txt + the rest of cpu.txt, then torchrec.txt with --no-deps), for
# Linux x86_64, without installing anything; then fail unless every pin is exact, every CUDA
# package in the set is of one CUDA major (13, torch's), and FAISS is the CPU build (faiss-cpu from
# cpu.txt: no faiss GPU wheel is built for torch's CUDA 13.0, see requirements/gpu.txt).
# Usage: bash scripts/check-gpu-requirements.sh [GPU_REQUIREMENTS_FILE]   (default requirements/gpu.txt)
#
# The resolver is uv's `pip compile` (pinned below, installed into a throwaway venv): it reads only
# the wheels' metadata. `pip install --dry-run --report` resolves the same set here, but the index as
# this machine reaches it advertises no separate metadata files, so pip downloads every wheel
# (about 4.6 GB for this set) to read it.
set -euo pipefail
cd "$(dirname "$0")/.."
GPU_REQ=${1:-requirements/gpu.txt}
PY=${PYTHON:-python3}
UV_VERSION=0.13.8
PLATFORM=x86_64-manylinux_2_28
start=$SECONDS
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail() { echo "gpu-requirements: FAIL: $*" >&2; exit 1; }

# The package registry alone. uv reads neither pip's config files nor PIP_* variables, so the
# find-links and local indexes a machine may give pip (here: a CPU build of torch whose version
# 2.13.0+cpu satisfies torch==2.13.0 and would hide the CUDA wheel) never enter the resolution;
# --no-config and unsetting UV_* keep uv's own settings out too. uv itself is installed by pip as
# this machine configures it (certificates included).
unset_args=()
for v in $(compgen -e | grep -E '^UV_' || true); do unset_args+=(-u "$v"); done
isolated() { env ${unset_args[@]+"${unset_args[@]}"} "$@"; }

# The same filter as scripts/setup.sh (read from it, so the two cannot drift apart).
filter=$(sed -n "s/.*grep -v -E '\([^']*\)' requirements\/cpu.txt.*/\1/p" scripts/setup.sh)
[ -n "$filter" ] || fail "could not find the GPU filter of cpu.txt (grep -v -E '...') in scripts/setup.sh"
grep -v -E "$filter" requirements/cpu.txt > "$tmp/cpu-rest.txt"

"$PY" -m venv "$tmp/venv"
"$tmp/venv/bin/python" -m pip install -q --disable-pip-version-check "uv==$UV_VERSION" \
  > "$tmp/uv-install.log" 2>&1 || { tail -5 "$tmp/uv-install.log" >&2; fail "could not install uv==$UV_VERSION"; }
pyver=$("$PY" -c 'import sys; print("%d.%d.%d" % sys.version_info[:3])')
compile() {
  isolated "$tmp/venv/bin/uv" pip compile --no-config --system-certs --no-progress --quiet --cache-dir "$tmp/cache" \
    --python "$tmp/venv/bin/python" --python-version "$pyver" --python-platform "$PLATFORM" \
    --annotation-style line --no-header "$@"
}
compile -o "$tmp/gpu.lock" "$GPU_REQ" "$tmp/cpu-rest.txt" > "$tmp/resolve.log" 2>&1 ||
  { tail -25 "$tmp/resolve.log" >&2; fail "$GPU_REQ + cpu.txt (less its CPU builds) does not resolve for Python $pyver, $PLATFORM"; }
compile --no-deps -o "$tmp/torchrec.lock" requirements/torchrec.txt > "$tmp/torchrec.log" 2>&1 ||
  { tail -10 "$tmp/torchrec.log" >&2; fail "requirements/torchrec.txt (--no-deps) does not resolve"; }

"$tmp/venv/bin/python" - "$GPU_REQ" "$tmp/gpu.lock" "$tmp/torchrec.lock" "$pyver" "$PLATFORM" "$((SECONDS - start))" <<'EOF'
import re
import sys

gpu_req, lock, torchrec_lock, pyver, platform, took = sys.argv[1:]
EXPECTED = 13  # the CUDA major of the set: the one of the PyPI torch wheel (cuda-toolkit 13.0.3)
# FAISS stays the CPU build on GPU machines: no faiss GPU wheel pairs with torch 2.13.0's CUDA 13.0
# (requirements/gpu.txt); a faiss GPU package (faiss-gpu, faiss-gpu-cu12, faiss-gpu-cuvs, ...) would
# bring a second faiss module and, for the CUDA 12 ones, a second CUDA runtime.
FAISS = "faiss-cpu"
# Wheels that declare no CUDA package: the major read from their binaries, per version.
KNOWN = {("fbgemm-gpu", "1.8.0"): 13}  # fbgemm_gpu/*.so link libcudart.so.13
CPU_BUILDS = ("fbgemm-gpu-cpu", "onnxruntime")  # never beside their CUDA builds
# CUDA wheels named without a -cuNN suffix whose version's major is the CUDA major (unlike, say,
# nvidia-cufft 12.x or nvidia-curand 10.x, which CUDA 13 ships).
BY_VERSION = {
    "cuda-toolkit", "cuda-bindings", "nvidia-cuda-runtime", "nvidia-cuda-nvrtc", "nvidia-cuda-cupti",
    "nvidia-cuda-nvcc", "nvidia-cuda-cccl", "nvidia-cublas", "nvidia-nvjitlink", "nvidia-nvtx",
}


def norm(name):
    return re.sub(r"[-_.]+", "-", name).lower()


def fail(msg):
    sys.exit(f"gpu-requirements: FAIL: {msg}")


def read_lock(path):
    versions, parents = {}, {}
    for line in open(path):
        m = re.match(r"([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==(\S+)\s*(?:#\s*via\s+(.*))?$", line.strip())
        if m:
            name = norm(m[1])
            versions[name] = m[2]
            parents[name] = {norm(p) for p in (m[3] or "").split(", ") if p and not p.startswith("-r ")}
    return versions, parents


def major(name, version):
    m = re.search(r"-cu(?:da)?(\d+)x?(?:-|$)", name)
    if m:
        return int(m[1])
    if name in BY_VERSION:
        return int(version.split(".")[0])
    return None


# Every requirement line of the GPU file is an exact pin.
pins = {}
for raw in open(gpu_req):
    line = raw.split("#", 1)[0].strip()
    if not line:
        continue
    m = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)(\[[A-Za-z0-9_,\s-]*\])?==([A-Za-z0-9.+!_-]+)", line)
    if not m:
        fail(f"{gpu_req}: '{line}' is not an exact pin (name==version)")
    pins[norm(m[1])] = m[3]

versions, parents = read_lock(lock)
for name, want in pins.items():
    if versions.get(name) != want:
        fail(f"{name}: pinned {want} in {gpu_req}, resolved {versions.get(name)}")
for name in sorted(versions):
    if name.startswith("faiss-gpu"):
        fail(
            f"{name} {versions[name]} (a faiss GPU build) is in the GPU set, via "
            f"{', '.join(sorted(parents[name])) or gpu_req}; FAISS stays {FAISS} (no faiss GPU wheel "
            f"is built for torch's CUDA {EXPECTED}.0: requirements/gpu.txt, docs/gpu.md)"
        )
if FAISS not in versions:
    fail(f"{FAISS} is not in the GPU set: FAISS on GPU machines is {FAISS} from cpu.txt "
         "(does the cpu.txt filter in scripts/setup.sh drop it?)")
for name in CPU_BUILDS:
    if name in versions:
        fail(f"{name} {versions[name]} (a CPU build) is in the GPU set, via {sorted(parents[name]) or gpu_req}")

children = {}
for name, ps in parents.items():
    for p in ps:
        children.setdefault(p, set()).add(name)

# The CUDA major of each pinned package: its own name, else the CUDA packages it requires, else KNOWN.
summary = {}
for name in pins:
    found = {major(name, versions[name])} - {None}
    found |= {major(c, versions[c]) for c in children.get(name, ())} - {None}
    if not found and (name, versions[name]) in KNOWN:
        found = {KNOWN[name, versions[name]]}
    if not found:
        continue  # not a CUDA package
    if len(found) > 1:
        fail(f"{name} {versions[name]} requires CUDA packages of several majors: {sorted(found)}")
    (got,) = found
    if got != EXPECTED:
        fail(f"{name} {versions[name]} is CUDA {got}; the set is CUDA {EXPECTED}")
    summary[name] = got
for name in ("torch", "fbgemm-gpu", "onnxruntime-gpu"):
    if summary.get(name) != EXPECTED:
        ver = versions.get(name)
        hint = "" if ver is None else (
            " (its wheel declares no CUDA package: read its libcudart soname and add it to KNOWN"
            " in scripts/check-gpu-requirements.sh, or pin an extra that declares it)")
        fail(f"{name} {ver}: CUDA major unknown, want {EXPECTED}{hint}")

# No CUDA package of another major anywhere in the set (nvidia-*-cu12, a CUDA 12 runtime, ...).
for name, version in sorted(versions.items()):
    got = major(name, version)
    if got is not None and got != EXPECTED:
        fail(f"{name} {version} is CUDA {got}, via {', '.join(sorted(parents[name])) or gpu_req}; the set is CUDA {EXPECTED}")

tr, _ = read_lock(torchrec_lock)
print(
    f"gpu-requirements: OK in {took}s: {len(versions)} packages resolve for Python {pyver} {platform}; "
    f"CUDA {EXPECTED}: torch {versions['torch']}, fbgemm-gpu {versions['fbgemm-gpu']}, "
    f"onnxruntime-gpu {versions['onnxruntime-gpu']}, nvidia-cuda-runtime {versions.get('nvidia-cuda-runtime')}"
    + f"; FAISS: {FAISS} {versions[FAISS]} (CPU)"
    + "; torchrec " + ", ".join(f"{v}" for v in tr.values()) + " (--no-deps)"
)
EOF
