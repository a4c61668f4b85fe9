"""The service's config file: serve/service.yaml holds every run option at its default, flags win
over the file, and a bad file is refused by name."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from serve.__main__ import parse

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "serve" / "service.yaml"


def test_shipped_config_lists_every_option_at_its_default() -> None:
    plain = vars(parse(["run", "pkg"]))
    from_file = vars(parse(["run", "pkg", "--config", str(SHIPPED)]))
    assert {k: v for k, v in from_file.items() if k != "config"} == {
        k: v for k, v in plain.items() if k != "config"
    }
    options = {k.replace("-", "_") for k in yaml.safe_load(SHIPPED.read_text())}
    assert options == set(plain) - {"command", "func", "package", "config"}


def test_flags_win_over_the_file(tmp_path: Path) -> None:
    config = tmp_path / "service.yaml"
    config.write_text("port: 9001\nbatch-max: 8\nscoring: threads\ntrusted-key: [a.pub, b.pub]\n")
    args = parse(["run", "pkg", "--config", str(config), "--port", "9002"])
    assert (args.port, args.batch_max, args.scoring) == (9002, 8, "threads")
    assert args.trusted_key == ["a.pub", "b.pub"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("prot: 9001\n", "unknown option 'prot'"),
        ("port: eighty\n", "port: 'eighty' is not valid"),
        ("scoring: gpu\n", "scoring: 'gpu' not one of"),
        ("- port\n", "expected a mapping"),
        ("port: [\n", "--config"),
    ],
)
def test_a_bad_file_is_refused_by_name(tmp_path: Path, text: str, message: str) -> None:
    config = tmp_path / "service.yaml"
    config.write_text(text)
    with pytest.raises(SystemExit, match=message.replace("[", r"\[")):
        parse(["run", "pkg", "--config", str(config)])


def test_a_missing_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match=r"missing\.yaml"):
        parse(["run", "pkg", "--config", str(tmp_path / "missing.yaml")])
