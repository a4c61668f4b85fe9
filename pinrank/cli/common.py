"""What every ``pinrank`` subcommand shares: help layout, examples, peak memory."""

from __future__ import annotations

import argparse
import inspect
from collections.abc import Callable, Sequence
from typing import Any


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Descriptions and examples as written, every option's default shown (where it has one)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        shown = action.default not in (None, False, [], argparse.SUPPRESS)
        if not shown or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def command(
    sub: Any,
    name: str,
    summary: str,
    func: Callable[[argparse.Namespace], None],
    examples: Sequence[str],
) -> argparse.ArgumentParser:
    """A subcommand: ``summary`` in ``pinrank --help``; the summary, the function's docstring and
    the examples in ``pinrank NAME --help``."""
    doc = inspect.getdoc(func) or ""
    description = summary[0].upper() + summary[1:] + "." + (f"\n\n{doc}" if doc else "")
    epilog = "examples:\n" + "\n".join(f"  {e}" for e in examples)
    parser: argparse.ArgumentParser = sub.add_parser(
        name, help=summary, description=description, epilog=epilog, formatter_class=HelpFormatter
    )
    parser.set_defaults(func=func)
    return parser
