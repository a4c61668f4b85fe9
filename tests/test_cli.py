"""The command line: one ``pinrank`` command whose every subcommand has a description, defaults
and examples; the demo runs end to end; bad input exits 2 with the culprit named."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pinrank import logs
from pinrank.cli import main


def test_demo_runs_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    lines = out.strip().splitlines()
    assert len(lines) == 4 and all(line.startswith("[data] ") for line in lines), out
    assert "label rate" in out and "values replaced by the spec's policies" in out
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["tables"]["events"] == 200_000
    assert sum(s["events"] for s in report["splits"].values()) == 200_000
    assert report["bad_values"]["age"]["null"] > 0  # the generator's dirty rows are counted
    assert (tmp_path / "prepared" / "features" / "state.json").exists()


def test_generate_prepare_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    raw = tmp_path / "raw"
    assert (
        main(
            [
                "generate",
                "--out",
                str(raw),
                "--users",
                "300",
                "--items",
                "200",
                "--events",
                "5000",
                "--seed",
                "4",
            ]
        )
        == 0
    )
    assert json.loads(capsys.readouterr().out)["events"] == 5000
    spec = Path(__file__).resolve().parents[1] / "conf" / "features" / "synthetic.yaml"
    assert (
        main(["prepare", "--raw", str(raw), "--spec", str(spec), "--out", str(tmp_path / "p")]) == 0
    )
    assert main(["report", str(tmp_path / "p"), "--json", str(tmp_path / "r.json")]) == 0
    assert json.loads((tmp_path / "r.json").read_text())["tables"]["users"] == 300
    out = tmp_path / "u"
    arrow = tmp_path / "users.arrow"
    assert (
        main(["users", "--data", str(tmp_path / "p"), "--out", str(out), "--arrow", str(arrow)])
        == 0
    )
    parquet = pq.read_table(out)  # the folder stays a Parquet dataset
    with pa.memory_map(str(arrow)) as source:
        assert pa.ipc.open_file(source).read_all().equals(parquet)
    assert parquet.num_rows == 300 and not list(tmp_path.glob(".*.tmp"))


def test_bad_file_exits_2_naming_file_and_column(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    raw = tmp_path / "raw"
    main(["generate", "--out", str(raw), "--users", "100", "--items", "50", "--events", "500"])
    shard = raw / "events" / "part-00000.parquet"
    pq.write_table(pq.read_table(shard).drop_columns(["engaged"]), shard)
    spec = Path(__file__).resolve().parents[1] / "conf" / "features" / "synthetic.yaml"
    code = main(["prepare", "--raw", str(raw), "--spec", str(spec), "--out", str(tmp_path / "p")])
    err = capsys.readouterr().err
    assert code == 2
    assert "part-00000.parquet" in err and "missing column 'engaged'" in err
    assert not (tmp_path / "p").exists()  # nothing half-written


def test_bad_spec_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = tmp_path / "bad.yaml"
    spec.write_text(
        "features:\n  f: {side: user, source: age, kind: numeric, transforms: [cube]}\n"
    )
    main(
        [
            "generate",
            "--out",
            str(tmp_path / "raw"),
            "--users",
            "50",
            "--items",
            "20",
            "--events",
            "100",
        ]
    )
    code = main(
        [
            "prepare",
            "--raw",
            str(tmp_path / "raw"),
            "--spec",
            str(spec),
            "--out",
            str(tmp_path / "p"),
        ]
    )
    assert code == 2 and "unknown transform 'cube'" in capsys.readouterr().err


def _own_log(folder: Path) -> Path:
    """A data config and the CSV files it names: string user ids, millisecond times, a
    rating for a label, no items table."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    rows = ["member,pin,at_ms,stars"]
    for i in range(600):
        u, p = rng.integers(0, 30), rng.integers(0, 40)
        rows.append(f"m{u:03d},{p},{(1_700_000_000 + i * 60) * 1000},{rng.integers(1, 6)}")
    (folder / "events.csv").write_text("\n".join(rows) + "\n")
    (folder / "spec.yaml").write_text(
        "features:\n"
        "  user_id: {side: user, source: user_id, kind: categorical, vocab: {}}\n"
        "  item_id: {side: item, source: item_id, kind: categorical, vocab: {}}\n"
    )
    (folder / "mine.yaml").write_text(
        "source:\n"
        "  _target_: pinrank.data.sources.TableSource\n"
        f"  root: {folder / 'data'}\n"
        f"  spec: {folder / 'spec.yaml'}\n"
        f"  base: {folder}\n"
        "  label: stars >= 4\n"
        "  ids: {user_id: map}\n"
        "  tables:\n"
        "    events:\n"
        "      path: events.csv\n"
        "      format: csv\n"
        "      columns: {user_id: member, item_id: pin, ts: {column: at_ms, time: ms}}\n"
    )
    return folder / "mine.yaml"


def test_ingest_reads_and_prepares_a_data_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _own_log(tmp_path / "mine")
    assert main(["ingest", str(config)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["read"]["rows"] == {"events": 600, "users": 30, "items": 40}
    assert sum(out["splits"].values()) == 600
    ids = pq.read_table(tmp_path / "mine" / "data" / "raw" / "ids" / "user_id.parquet")
    assert ids["original"].to_pylist() == [f"m{u:03d}" for u in range(30)]
    # a field overridden from the command line; a bad rule exits 2 naming it
    assert main(["ingest", str(config), "--set", "label=stars >= 9"]) == 2
    assert "label 'stars >= 9' matches no row of 600 events" in capsys.readouterr().err


def test_version_and_every_subcommand_has_description_defaults_and_examples(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from pinrank.cli import PASS_THROUGH, build_parser, version

    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0 and capsys.readouterr().out.strip() == f"pinrank {version()}"
    parser = build_parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices
    assert set(commands) >= {
        "generate",
        "inspect",
        "ingest",
        "prepare",
        "report",
        "demo",
        "train",
        "export",
        "keygen",
        "verify",
        "feed",
        "users",
        "feeds",
        "serve",
    }
    for name, sub in commands.items():
        if name in PASS_THROUGH:
            continue
        text = sub.format_help()
        assert "examples:\n  pinrank " + name in text, name
        assert sub.description and len(sub.description) > 10, name
        if any(a.default not in (None, False, [], "==SUPPRESS==") for a in sub._actions[1:]):
            assert "(default: " in text, name


@pytest.mark.parametrize("command", ["train", "export"])
def test_hydra_commands_answer_with_their_config(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as stop:
        main(["-q", command, "--help"])
    assert stop.value.code in (0, None)
    out = capsys.readouterr().out
    assert "== Config ==" in out
    if command == "train":
        assert "model: interests, two_tower, wide_deep" in out  # the shipped config groups


def test_serve_answers_with_its_options(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stop:
        main(["serve", "run", "--help"])
    assert stop.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: pinrank serve run") and "--config" in out


def test_verbosity_sets_the_loggers(tmp_path: Path) -> None:
    import logging

    keygen = ["keygen", "--out", str(tmp_path), "--if-missing"]
    for argv, ours, theirs in [
        (["-q", *keygen], logging.WARNING, logging.WARNING),
        (keygen, logging.INFO, logging.WARNING),
        (["-v", *keygen], logging.DEBUG, logging.INFO),
    ]:
        assert main(argv) == 0
        assert logging.getLogger("pinrank").level == ours, argv
        assert logging.getLogger("faiss.loader").level == theirs, argv
        assert logging.getLogger("pytorch_lightning").level == theirs, argv
        assert logging.getLogger().level == theirs, argv
    logs.setup(0)


def test_library_info_lines_are_quiet_by_default(capsys: pytest.CaptureFixture[str]) -> None:
    import logging

    logs.setup(0)
    logging.getLogger("faiss.loader").info("Loading faiss with AVX512 support.")
    logging.info("Successfully loaded: 'fbgemm_gpu_py.so'")  # FBGEMM logs on the root logger
    logging.getLogger("pinrank.demo").info("[demo] a result line")
    logging.getLogger("faiss.loader").warning("a real problem")
    err = capsys.readouterr().err
    assert err.splitlines() == ["[demo] a result line", "WARNING faiss.loader: a real problem"]


def test_a_shipped_data_config_is_found_by_name(tmp_path: Path) -> None:
    from pinrank.data.sources import SyntheticSource, load_source

    source = load_source("synthetic", tmp_path)
    assert isinstance(source, SyntheticSource)
    assert source.root == str(tmp_path / "data" / "synthetic")
    assert Path(source.spec).is_file() and Path(source.spec).name == "synthetic.yaml"
    with pytest.raises(FileNotFoundError):
        load_source("no_such_config", tmp_path)


def test_train_finds_a_teams_data_config_in_the_working_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Installed, the configs come from the package; ./conf/data/mine.yaml is searched after."""
    from hydra import compose, initialize_config_module

    (tmp_path / "conf" / "data").mkdir(parents=True)
    (tmp_path / "conf" / "data" / "mine.yaml").write_text(
        "source:\n  _target_: pinrank.data.sources.SyntheticSource\n"
        "  root: ${paths.data_dir}/mine\ndatamodule: {}\n"
    )
    monkeypatch.chdir(tmp_path)
    with initialize_config_module("pinrank.conf", version_base="1.3"):
        mine = compose("train", overrides=["data=mine"])
        shipped = compose("train", overrides=["model=wide_deep"])
    assert mine.data.source.root == "./data/mine"
    assert Path(shipped.data.source.spec).is_file()
    assert shipped.model.summary[0] == "auc"
