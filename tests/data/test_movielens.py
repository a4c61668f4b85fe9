"""MovieLens-100K read through configuration alone (``conf/data/ml100k.yaml``, the generic
table source): the same tables the hand-written importer wrote before it was removed.

The real data set is read from ``../shared/data/ml-100k`` (or ``$PINRANK_ML100K``) and never
copied; those tests skip when it is absent. Error cases use tiny hand-written files.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pytest
from data_fixtures import movielens_raw

from pinrank.data.io import read_table
from pinrank.data.tables import DataConfigError

COLUMNS = {
    "users": ["user_id", "region", "location", "gender", "age", "occupation"],
    "items": ["item_id", "interests", "created_ts"],
    "events": ["user_id", "item_id", "ts", "engaged", "engagement"],
}


def read_movielens(src: Path, out: Path) -> dict[str, Path]:
    raw = movielens_raw(src, out)
    return {name: raw / name for name in ("users", "items", "events")}


def ml100k_dir() -> Path:
    """The MovieLens-100K folder, or skip the test when it is not there."""
    default = Path(__file__).resolve().parents[2].parent / "shared/data/ml-100k"
    root = Path(os.environ.get("PINRANK_ML100K", default))
    missing = [f for f in ("u.user", "u.item", "u.data") if not (root / f).is_file()]
    if missing:
        pytest.skip(
            f"MovieLens-100K not found at {root}: missing {', '.join(missing)} "
            "(set PINRANK_ML100K to the ml-100k folder)"
        )
    return root


@pytest.fixture(scope="module")
def ml_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return read_movielens(ml100k_dir(), tmp_path_factory.mktemp("ml100k"))


@pytest.fixture(scope="module")
def ml_tables(ml_dirs: dict[str, Path]) -> dict[str, pa.Table]:
    return {name: read_table(path, name) for name, path in ml_dirs.items()}


def test_layout_and_row_counts(ml_dirs: dict[str, Path], ml_tables: dict[str, pa.Table]) -> None:
    assert set(ml_dirs) == {"users", "items", "events"}
    for folder in ml_dirs.values():
        assert sorted(p.name for p in folder.iterdir()) == ["part-00000.parquet"]
    counts = json.loads((ml_dirs["events"].parent / "source.json").read_text())
    assert counts["skipped"] == {} and counts["engaged"] == 55_375
    counts = {name: t.num_rows for name, t in ml_tables.items()}
    assert counts == {"users": 943, "items": 1682, "events": 100_000}


@pytest.mark.parametrize("name", ["users", "items", "events"])
def test_tables_have_the_mapped_columns(ml_tables: dict[str, pa.Table], name: str) -> None:
    assert ml_tables[name].column_names == COLUMNS[name]


def test_engaged_matches_ratings(ml_tables: dict[str, pa.Table]) -> None:
    lines = (ml100k_dir() / "u.data").read_text().split("\n")
    ratings = [int(line.split("\t")[2]) for line in lines if line]
    events = ml_tables["events"]
    engaged = events.column("engaged").to_pylist()
    assert sum(engaged) == sum(r >= 4 for r in ratings) == 55_375
    kinds = [str(r) if r >= 4 else "none" for r in ratings]  # the rating, where engaged
    assert events.column("engagement").to_pylist() == kinds


def test_user_columns(ml_tables: dict[str, pa.Table]) -> None:
    users = {u["user_id"]: u for u in ml_tables["users"].to_pylist()}
    first = users[1]  # 1|24|M|technician|85711
    assert (first["age"], first["gender"], first["occupation"]) == (24, "M", "technician")
    assert (first["region"], first["location"]) == ("8", "857")
    canadian = users[74]  # zip code T8H1N
    assert (canadian["region"], canadian["location"]) == ("T", "T8H")
    assert users[2]["location"] == "940"  # 94043; and 01002 keeps its leading 0:
    assert any(u["location"].startswith("0") for u in users.values())
    assert {u["gender"] for u in users.values()} == {"M", "F"}


def test_latin1_items_import(ml_tables: dict[str, pa.Table]) -> None:
    raw = (ml100k_dir() / "u.item").read_bytes()
    with pytest.raises(UnicodeDecodeError):
        raw.decode("utf-8")
    lines = raw.decode("latin-1").splitlines()
    non_ascii = [line.split("|") for line in lines if not line.isascii()]
    assert non_ascii, "expected titles with non-ASCII characters in u.item"
    items = {i["item_id"]: i for i in ml_tables["items"].to_pylist()}
    for fields in non_ascii:
        item = items[int(fields[0])]
        assert item["interests"] == [g for g, flag in enumerate(fields[5:]) if flag == "1"]
        released = datetime.strptime(fields[2], "%d-%b-%Y").replace(tzinfo=UTC)
        assert item["created_ts"] == int(released.timestamp())
    assert items[543]["interests"] == [8, 12]  # Misérables, Les (1995): Drama, Musical
    assert items[543]["created_ts"] == 788_918_400  # 1995-01-01T00:00:00Z


def test_item_columns(ml_tables: dict[str, pa.Table]) -> None:
    items = ml_tables["items"]
    assert items.column("item_id").to_pylist() == list(range(1, 1683))
    assert items.column("created_ts").null_count == 1  # item 267 "unknown" has no date
    genres = items.column("interests").to_pylist()
    assert all(g and g == sorted(g) and set(g) <= set(range(19)) for g in genres)


def test_import_is_deterministic(ml_tables: dict[str, pa.Table], tmp_path: Path) -> None:
    again = read_movielens(ml100k_dir(), tmp_path)
    for name, table in ml_tables.items():
        assert read_table(again[name], name).equals(table)


# Tiny hand-written MovieLens-like files (not derived from the real data).
USER_LINES = ["1|30|F|writer|02139", "2|41|M|other|K1A0B"]
ITEM_LINES = [
    "1|Film A (1990)|05-Mar-1990||http://x|" + "|".join(["0"] * 18 + ["1"]),
    "2|Film É (1991)|||http://y|" + "|".join(["1"] + ["0"] * 18),
]
DATA_LINES = ["1\t1\t5\t100", "1\t2\t3\t200", "2\t1\t4\t150"]


def write_tiny(folder: Path, users: list[str], items: list[str], data: list[str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "u.user").write_text("\n".join(users) + "\n", encoding="latin-1")
    (folder / "u.item").write_text("\n".join(items) + "\n", encoding="latin-1")
    (folder / "u.data").write_text("\n".join(data) + "\n", encoding="latin-1")
    return folder


def test_tiny_import(tmp_path: Path) -> None:
    src = write_tiny(tmp_path / "src", USER_LINES, ITEM_LINES, DATA_LINES)
    out = read_movielens(src, tmp_path / "out")
    users = read_table(out["users"], "users").to_pylist()
    assert [(u["region"], u["location"]) for u in users] == [("0", "021"), ("K", "K1A")]
    items = read_table(out["items"], "items").to_pylist()
    assert [(i["interests"], i["created_ts"]) for i in items] == [([18], 636_595_200), ([0], None)]
    events = read_table(out["events"], "events")
    assert events.column("engaged").to_pylist() == [True, False, True]
    assert events.column("engagement").to_pylist() == ["5", "none", "4"]
    assert events.column("ts").to_pylist() == [100, 200, 150]


@pytest.mark.parametrize(
    ("file", "lines", "message"),
    [
        ("u.data", [*DATA_LINES[:2], "2\t1\tfour\t150"],
         r"u\.data: column 'rating': 'four' is not a number .*row \{'user': 2, 'movie': 1, "
         r"'timestamp': 150, 'rating': 'four'\}"),
        ("u.data", ["1\t1\t5\t100", "1\t2\t3"], r"u\.data: CSV parse error: Row #2: Expected 4"),
        ("u.user", ["1|thirty|F|writer|02139"], r"u\.user: column 'age' \(-> age, int32\)"),
        ("u.item", [ITEM_LINES[0], "2|Film B (1991)|01-Jan-1991||http://y|0|1"],
         r"u\.item: CSV parse error: Row #2: Expected 24 columns, got 7"),
        ("u.item", [ITEM_LINES[0].replace("05-Mar-1990", "05-Mrz-1990")],
         r"u\.item: column 'release' \(-> created_ts\): '05-Mrz-1990' is not a time in %d-%b-%Y; "
         r"row \{'movie': 1"),
        ("u.item", [ITEM_LINES[0].replace("|1", "|2")],
         r"u\.item: column \['unknown', .*\] \(-> interests\): flags .* must be 0 or 1; row"),
    ],
)  # fmt: skip
def test_malformed_line_names_file_column_and_row(
    tmp_path: Path, file: str, lines: list[str], message: str
) -> None:
    tiny = {"u.user": USER_LINES, "u.item": ITEM_LINES, "u.data": DATA_LINES, file: lines}
    src = write_tiny(tmp_path / "src", tiny["u.user"], tiny["u.item"], tiny["u.data"])
    with pytest.raises(DataConfigError, match=message) as err:
        read_movielens(src, tmp_path / "out")
    assert str(src / file) in str(err.value)
    assert not (tmp_path / "out").exists()  # nothing written when a source is bad


@pytest.mark.parametrize("file", ["u.user", "u.item", "u.data"])
def test_missing_file_is_named(tmp_path: Path, file: str) -> None:
    src = write_tiny(tmp_path / "src", USER_LINES, ITEM_LINES, DATA_LINES)
    (src / file).unlink()
    with pytest.raises(DataConfigError, match=rf"path: no file at '.*{file}'"):
        read_movielens(src, tmp_path / "out")
