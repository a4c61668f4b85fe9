"""Every link and file reference in the README and docs/ resolves.

Checked in ``README.md`` and every ``docs/**/*.md``, outside fenced code blocks:

**Links** ``[text](target)``, ``![alt](target)`` and ``[label]: target`` definitions. Targets with
a URL scheme (``http:``, ``https:``, ``mailto:``, ...) are not checked. Any other target is a path
relative to the file that holds the link (``/path`` is relative to the repository root, as on
GitHub); it must exist and lie inside the repository. An ``#anchor`` on a Markdown target (or
alone, for the same file) must name one of its ``#`` headings by GitHub's slug rule (lowercase,
punctuation other than ``-`` and ``_`` dropped, each space a ``-``, repeats numbered ``-1``,
``-2``) or an ``<a name>`` / ``id`` anchor; on any other file only ``#L<n>`` line anchors pass.

**File references**: inline code (```` `...` ````) holding one token that names a repository
path, read from the repository root. A token is such a path when, after dropping a ``:<line>``
suffix (or a ``::test`` id, or an ``#anchor``, not checked here), it

- starts with a top-level entry of the repository (``pinrank/...``, ``conf/...``, ``docs/...``,
  ``tests/...``, ``scripts/...``, ``serve/...``, ``benchmarks/...``, ``train.py``, ...), other
  than the generated or local ones in :data:`NOT_CHECKED` (``data/``, ``outputs/``, ``.venv/``,
  ...), or
- contains a ``/`` and ends in ``.py`` or ``.md`` (so ``pinrnak/x.py`` or a package-relative
  ``models/x.py`` is reported rather than skipped), or
- starts with ``../`` (read from the file holding it, and it must stay inside the repository),
  or with ``../shared/``, the project's shared folder beside the repository: only the paths in
  :data:`SHARED` may be named there, and they are not required to exist (a fresh clone lacks
  them).

A trailing ``/`` requires a directory. Not file references: tokens with spaces (commands), URL
routes (``/v1/score``), globs and placeholders (any of ``* ? [ ] { } < > $ = @ , ...``, or an
all-capitals path segment such as ``RUN_DIR``), Python module paths (``pinrank.data.splits``),
bare file names other than top-level ones (``run.json``), and the example files the README
tells the reader to create (:data:`EXAMPLES`).

A broken reference is reported as ``file:line -> target (reason)``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from urllib.parse import unquote

ROOT = Path(__file__).resolve().parents[1]

# top-level entries that are generated or local, never committed: not checked
NOT_CHECKED = frozenset(
    {".git", ".venv", "data", "outputs", "multirun", "runs", "build", "lightning_logs"}
)
# the shared folder beside the repository in development: only these may be named (or anything
# below them), and they are not required to exist
SHARED = ("../shared/docs/PROTOCOL.md", "../shared/data/ml-100k")
# files the README tells the reader to write themselves
EXAMPLES = frozenset({"conf/data/mine.yaml", "conf/features/mine.yaml"})

_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_CODE = re.compile(r"(?<!`)(`+)(?!`)(.+?)(?<!`)\1(?!`)", re.S)
_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*(<[^>]*>|[^)\s]+)(?:\s+[\"'(][^)]*)?\)")
_DEFINITION = re.compile(r"^ {0,3}\[[^\]]+\]:\s*(<[^>]*>|\S+)", re.M)
_HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)(?:\s+#+)?\s*$")
_HTML_ANCHOR = re.compile(r"<a\s[^>]*\b(?:name|id)\s*=\s*[\"']([^\"']+)[\"']", re.I)
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
_SUFFIX = re.compile(r"(?:::.*|#.*|:\d+(?:-\d+)?)$")  # a test id, an anchor, a line
_PLACEHOLDER = re.compile(r"[*?\[\]{}<>$=@,]|\.\.\.")
_CAPS = re.compile(r"^[A-Z][A-Z0-9_]*$")


def slug(heading: str) -> str:
    """GitHub's anchor of a heading's text (inline code, links and emphasis rendered first).

    Example::

        >>> slug("The feed service: `python -m serve`")
        'the-feed-service-python--m-serve'
        >>> slug("Splits: train, val, test and cold")
        'splits-train-val-test-and-cold'
    """
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # links -> their text
    text = re.sub(r"<[^>]+>", "", text).replace("`", "")
    text = re.sub(r"[^\w\- ]", "", text.strip().lower())
    return text.replace(" ", "-")


def _prose(text: str) -> list[tuple[int, str]]:
    """The blocks of a Markdown text outside fenced code, as (first line number, text)."""
    blocks: list[tuple[int, str]] = []
    current: list[str] = []
    start, fence = 1, ""
    for number, line in enumerate(text.splitlines(), 1):
        opened = _FENCE.match(line)
        if fence:
            if opened and opened.group(1)[0] == fence[0] and len(opened.group(1)) >= len(fence):
                fence = ""
            start = number + 1
            continue
        if opened or not line.strip():
            if current:
                blocks.append((start, "\n".join(current)))
            current, start = [], number + 1
            fence = opened.group(1) if opened else ""
            continue
        current.append(line)
    if current:
        blocks.append((start, "\n".join(current)))
    return blocks


def anchors(path: Path) -> set[str]:
    """Every anchor a Markdown file defines: its headings' slugs and its HTML anchors."""
    found: set[str] = set()
    counts: dict[str, int] = {}
    for _, block in _prose(path.read_text(encoding="utf-8")):
        found.update(_HTML_ANCHOR.findall(block))
        for line in block.splitlines():
            if m := _HEADING.match(line):
                base = slug(m.group(2))
                n = counts.get(base, 0)
                counts[base] = n + 1
                found.add(base if n == 0 else f"{base}-{n}")
    return found


def _inside(path: Path, root: Path) -> bool:
    return path.resolve().is_relative_to(root.resolve())


def _check_link(target: str, source: Path, root: Path) -> str | None:
    """Why a link target is broken, or None."""
    target = target.strip("<>")
    if _SCHEME.match(target):
        return None
    raw_path, _, anchor = target.partition("#")
    raw_path = unquote(raw_path)
    if not raw_path:
        path = source
    elif raw_path.startswith("/"):
        path = root / raw_path.lstrip("/")
    else:
        path = source.parent / raw_path
    if not _inside(path, root):
        return "outside the repository"
    if not path.exists():
        return "no such file"
    if raw_path.endswith("/") and not path.is_dir():
        return "not a directory"
    if anchor and path.is_file():
        if path.suffix.lower() == ".md":
            if unquote(anchor).lower() not in anchors(path):
                return f"no heading #{anchor} in {path.resolve().relative_to(root.resolve())}"
        elif not re.fullmatch(r"L\d+(-L\d+)?", anchor):
            return f"anchor #{anchor} on a file that is not Markdown"
    return None


def _reference(token: str, root: Path) -> str | None:
    """The repository path a code span names, or None when it is not a file reference."""
    token = _SUFFIX.sub("", token.strip())
    if not token or any(c.isspace() for c in token) or "://" in token:
        return None
    if token.startswith(("/", "~")) or _PLACEHOLDER.search(token):
        return None
    if token.startswith("./"):
        token = token[2:]
    segments = [s for s in token.split("/") if s]
    if not segments or ":" in token or any(_CAPS.match(s) for s in segments):
        return None
    if token in EXAMPLES:
        return None
    if token.startswith("../"):
        return token
    first = segments[0]
    if first in (".", "..") or first in NOT_CHECKED or first.endswith("_cache"):
        return None
    if (root / first).exists() and (len(segments) > 1 or first == token.rstrip("/")):
        return token
    if "/" in token and token.endswith((".py", ".md")):
        return token
    return None


def _check_reference(token: str, source: Path, root: Path) -> str | None:
    """Why a file reference is broken, or None."""
    if token.startswith("../shared/"):
        name = token.rstrip("/")
        if any(name == s or name.startswith(s + "/") for s in SHARED):
            return None
        return f"outside the repository (only {', '.join(SHARED)} may be named)"
    path = (source.parent if token.startswith("../") else root) / token
    if not _inside(path, root):
        return "outside the repository"
    if not path.exists():
        return "no such file"
    if token.endswith("/") and not path.is_dir():
        return "not a directory"
    return None


def _line(start: int, block: str, offset: int) -> int:
    return start + block.count("\n", 0, offset)


def broken_references(path: Path, root: Path = ROOT) -> list[str]:
    """``file:line -> target (reason)`` for each broken link or file reference in ``path``, in
    line order."""
    found = sorted(_broken(path, root), key=lambda item: item[0])
    name = path.resolve().relative_to(root.resolve()).as_posix()
    return [f"{name}:{line} -> {target} ({why})" for line, target, why in found]


def _broken(path: Path, root: Path) -> Iterator[tuple[int, str, str]]:
    """(line, target, reason) of each broken link or file reference in ``path``."""
    for start, block in _prose(path.read_text(encoding="utf-8")):
        # mask code spans (same length) so that brackets in code are not taken for links
        masked = _CODE.sub(lambda m: m.group(1) + "x" * len(m.group(2)) + m.group(1), block)
        for m in _LINK.finditer(masked):
            target = block[m.start(1) : m.end(1)]
            if why := _check_link(target, path, root):
                yield _line(start, block, m.start()), target, why
        for m in _DEFINITION.finditer(masked):
            target = block[m.start(1) : m.end(1)]
            if why := _check_link(target, path, root):
                yield _line(start, block, m.start()), target, why
        for m in _CODE.finditer(block):
            token = _reference(m.group(2), root)
            if token and (why := _check_reference(token, path, root)):
                yield _line(start, block, m.start()), token, why


def markdown_files(root: Path = ROOT) -> list[Path]:
    """The README and every Markdown file under docs/."""
    return [root / "README.md", *sorted((root / "docs").rglob("*.md"))]


def check(files: Iterable[Path], root: Path = ROOT) -> list[str]:
    return [line for path in files for line in broken_references(path, root)]


def test_links_and_file_references_resolve() -> None:
    files = markdown_files()
    assert len(files) > 5 and all(p.is_file() for p in files)
    broken = check(files)
    assert not broken, f"{len(broken)} broken reference(s):\n" + "\n".join(broken)


def test_the_checker_reports_what_is_broken(tmp_path: Path) -> None:
    """The checker finds each kind of broken reference and passes what the rule leaves out, so
    the test above cannot pass by finding nothing."""
    (tmp_path / "pinrank").mkdir()
    (tmp_path / "pinrank" / "real.py").write_text("")
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "other.md").write_text("# Other page\n\n## A `code` part: yes\n")
    (tmp_path / "README.md").write_text(
        "# Title\n"
        "\n"
        "Fine: [other](docs/other.md#a-code-part-yes), [top](#title), [web](https://x.org/a),\n"
        "[mail](mailto:a@b.c), `pinrank/real.py:3`, `pinrank/`, `outputs/<run>/metrics.json`,\n"
        "`data/demo/users.arrow`, `conf/*.yaml`, `RUN_DIR/run.json`, `pinrank.data.splits`,\n"
        "`../shared/docs/PROTOCOL.md`, `../shared/data/ml-100k/u.data`, `run.json`, `/v1/score`,\n"
        "`python train.py data=mine`, `conf/data/mine.yaml`.\n"
        "\n"
        "Broken: [gone](docs/gone.md) and [bad anchor](docs/other.md#nowhere).\n"
        "`pinrank/missing.py` and `models/towers.py` and `../shared/secret.md` and\n"
        "`pinrank/real.py/` and [up](../outside.md) and [self](#no-such-heading).\n"
        "\n"
        "```bash\n"
        "ls pinrank/not_checked_in_a_fence.py [x](nowhere.md)\n"
        "```\n"
        "\n"
        "[ref]: pinrank/absent.py\n"
    )
    assert check([tmp_path / "README.md"], tmp_path) == [
        "README.md:9 -> docs/gone.md (no such file)",
        "README.md:9 -> docs/other.md#nowhere (no heading #nowhere in docs/other.md)",
        "README.md:10 -> pinrank/missing.py (no such file)",
        "README.md:10 -> models/towers.py (no such file)",
        "README.md:10 -> ../shared/secret.md (outside the repository (only "
        + ", ".join(SHARED)
        + " may be named))",
        "README.md:11 -> ../outside.md (outside the repository)",
        "README.md:11 -> #no-such-heading (no heading #no-such-heading in README.md)",
        "README.md:11 -> pinrank/real.py/ (not a directory)",
        "README.md:17 -> pinrank/absent.py (no such file)",
    ]
