"""One long list in a batch: the per-pair ranker with list columns trimmed before padding, and
without (the padded width set by the longest row).

    .venv/bin/python benchmarks/list_width.py --package outputs/packages/demo \\
        --data data/demo/prepared --rows 10000 --long 20000

Takes ``--rows`` held-out test pairs, gives the first user a history of ``--long`` pins, packs
the rows as every entry point does (:func:`pinrank.features.columns.pack`, which trims a list
column to its features' ``max_len``) and as it would without trimming, and times one ``ranker``
run of each, with the padded width and the process's peak RSS. The untrimmed run may fail to
allocate: that is recorded, not raised. Writes ``benchmarks/results/list_width.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import resource
import time
from pathlib import Path
from typing import Any

import pyarrow as pa

from pinrank.data.prepare import Prepared
from pinrank.export.verify import held_out_rows
from pinrank.features.columns import pack
from pinrank.serving.package import load_package
from pinrank.serving.runtime import OnnxBackend
from pinrank.serving.signing import Trust

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--package", default="outputs/packages/demo")
    parser.add_argument("--data", default="data/demo/prepared")
    parser.add_argument("--trusted-key", default="outputs/keys/signing.pub")
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--long", type=int, default=20_000)
    args = parser.parse_args()
    package = load_package(args.package, Trust.from_files([args.trusted_key]))
    tables = held_out_rows(Prepared.load(args.data), "test", args.rows)
    users = tables["user"]
    history = users.column("history").to_pylist()
    history[0] = list(range(args.long))
    field = users.schema.get_field_index("history")
    tables["user"] = users.set_column(
        field, "history", pa.array(history, users.schema.field("history").type)
    )
    backend = OnnxBackend(package)
    results: dict[str, Any] = {}
    for name, trim in (("trimmed", True), ("untrimmed", False)):
        arrays: dict[str, Any] = {}
        for side, table in tables.items():
            cols = package.columns(side)
            arrays |= pack(
                table, cols if trim else [dataclasses.replace(c, max_len=None) for c in cols]
            )
        backend.run("ranker", {k: v[:8] for k, v in arrays.items()})  # sessions made first
        t0 = time.perf_counter()
        try:
            backend.run("ranker", arrays)
            outcome = {"seconds": round(time.perf_counter() - t0, 3)}
        except Exception as err:  # ONNX Runtime's allocation failure
            outcome = {"failed": str(err).split("Status Message:")[-1].strip()[:200]}
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        results[name] = outcome | {
            "width": int(arrays["user.history"].shape[1]),
            "peak_rss_mb": round(rss),
        }
        shown = outcome.get("seconds", outcome.get("failed"))
        print(f"{name}: padded width {results[name]['width']}, {shown}, peak RSS {rss:.0f} MB")
    results |= {
        "config": vars(args),
        "machine": platform.platform(),
        "date": time.strftime("%Y-%m-%d"),
    }
    out = ROOT / "benchmarks" / "results" / "list_width.json"
    out.write_text(json.dumps(results, indent=2))
    print(f"-> {out}")


if __name__ == "__main__":
    main()
