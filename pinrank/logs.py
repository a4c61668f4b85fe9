"""One logging setup for every ``pinrank`` command: ``-q`` / default / ``-v`` / ``-vv``.

pinrank's own loggers (``pinrank.*``) report at INFO by default; the libraries under them report
only warnings unless ``-v`` is given. That silences FBGEMM's "Successfully loaded" lines (logged on
the root logger at import), FAISS's loader probing CPU features, and Lightning's device lines and
tips, none of which a person running a command needs.

=========  ==================  ==================
verbosity  pinrank loggers     library loggers
=========  ==================  ==================
-1 (-q)    WARNING             WARNING
0          INFO                WARNING
1 (-v)     DEBUG               INFO
2 (-vv)    DEBUG               DEBUG
=========  ==================  ==================

The level can also come from the environment (``PINRANK_VERBOSITY=-1..2``), which is how a
command passes it to the processes it starts (data loader workers, batch workers, Ray tasks).
"""

from __future__ import annotations

import logging
import os
import resource
import sys
import warnings
from typing import Any

ENV = "PINRANK_VERBOSITY"

# libraries whose INFO lines are noise at the default verbosity; the root logger catches the rest
# (FBGEMM logs its library loads through logging.info on the root logger)
LIBRARIES = (
    "faiss",
    "faiss.loader",
    "pytorch_lightning",
    "lightning",
    "lightning_fabric",
    "torch",
    "torchrec",
    "fbgemm_gpu",
    "onnxscript",
    "onnx_ir",
    "ray",
    "hydra",
    "uvicorn",
    "httpx",
)

_DETAILED = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time (a test's capture, a redirect), not to the
    stream that was current when logging was set up."""

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


class _PlainFormatter(logging.Formatter):
    """pinrank's INFO lines as the message alone; anything else names its level and logger."""

    def format(self, record: logging.LogRecord) -> str:
        if record.levelno <= logging.INFO and record.name.startswith("pinrank"):
            return record.getMessage()
        return f"{record.levelname} {record.name}: {super().format(record)}"


def verbosity_from_env(default: int = 0) -> int:
    """The verbosity named by ``$PINRANK_VERBOSITY``, clamped to -1..2."""
    raw = os.environ.get(ENV, "")
    try:
        value = int(raw) if raw else default
    except ValueError:
        raise ValueError(f"{ENV}={raw!r}: expected an integer from -1 to 2") from None
    return max(-1, min(2, value))


def levels(verbosity: int) -> tuple[int, int]:
    """(pinrank level, library level) of a verbosity.

    >>> [logging.getLevelName(x) for x in levels(0)]
    ['INFO', 'WARNING']
    >>> [logging.getLevelName(x) for x in levels(-1)]
    ['WARNING', 'WARNING']
    >>> [logging.getLevelName(x) for x in levels(2)]
    ['DEBUG', 'DEBUG']
    """
    verbosity = max(-1, min(2, verbosity))
    ours = {-1: logging.WARNING, 0: logging.INFO}.get(verbosity, logging.DEBUG)
    theirs = {-1: logging.WARNING, 0: logging.WARNING, 1: logging.INFO}.get(
        verbosity, logging.DEBUG
    )
    return ours, theirs


def setup(verbosity: int | None = None, *, fmt: str = "plain") -> int:
    """Configure logging for a command and return the verbosity used.

    ``verbosity=None`` reads ``$PINRANK_VERBOSITY`` (default 0); the value is exported to the
    environment so that child processes log alike. Idempotent: a second call replaces the handler.
    ``fmt`` is ``plain`` (the message alone, for people) or ``detailed`` (time, level and logger,
    for services).
    """
    if verbosity is None:
        verbosity = verbosity_from_env()
    verbosity = max(-1, min(2, verbosity))
    os.environ[ENV] = str(verbosity)
    ours, theirs = levels(verbosity)
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_pinrank", False):
            root.removeHandler(handler)
    handler = _StderrHandler()
    handler._pinrank = True  # type: ignore[attr-defined]
    if fmt not in ("plain", "detailed"):
        raise ValueError(f"log format {fmt!r}: expected 'plain' or 'detailed'")
    handler.setFormatter(_PlainFormatter() if fmt == "plain" else logging.Formatter(_DETAILED))
    root.addHandler(handler)
    root.setLevel(theirs)
    for name in LIBRARIES:
        logging.getLogger(name).setLevel(theirs)
    logging.getLogger("pinrank").setLevel(ours)
    if verbosity < 1:
        # library warnings about their own internals (deprecations of APIs we do not call, ...)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
    return verbosity


def peak_rss_mb() -> float:
    """This process's peak resident set so far, in MB (what commands and batch records report)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
