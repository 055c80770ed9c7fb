"""What every ``crypten-mpcache`` command shares: the error contract and argument types.

Bad input, wherever it is found (argparse, a command's own checks, a config's
validation), ends with ONE line ``crypten-mpcache <command>: error: ...`` on stderr and
exit status 2; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

PROG = "crypten-mpcache"
USAGE_ERROR = 2


class CLIError(ValueError):
    """A user-facing error: printed as one line, exit status 2."""


class UsageError(CLIError):
    """Bad command-line syntax found by argparse; ``prog`` names the (sub)command."""

    def __init__(self, prog: str, message: str) -> None:
        super().__init__(message)
        self.prog = prog


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are ``UsageError`` (one line, exit 2, in ``main``)
    instead of a usage block and ``sys.exit``."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(self.prog, message)


def error_line(prog: str, error: BaseException) -> str:
    """``<prog>: error: <first line of the message>``."""
    text = str(error).strip()
    return f"{prog}: error: {text.splitlines()[0] if text else repr(error)}"


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _amount(text: str, counts: bool) -> float | int:
    """A ratio of the context in (0, 1] (with a dot: ``0.05``) or, where ``counts``, a
    token count (``128``)."""
    wanted = ("a fraction like 0.05 or a token count like 128" if counts
              else "a fraction of the context in (0, 1] like 0.05")
    try:
        value: float | int = float(text) if ("." in text or not counts) else int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {wanted}, got {text!r}") from None
    if isinstance(value, float) and not 0.0 < value <= 1.0 or isinstance(value, int) \
            and value < 1:
        raise argparse.ArgumentTypeError(f"expected {wanted}, got {text!r}")
    return value


def budget(text: str) -> float | int:
    """A budget: a ratio of the context in (0, 1] (``0.05``) or a token count (``128``)."""
    return _amount(text, counts=True)


def ratio(text: str) -> float:
    """A budget that must be a ratio of the context in (0, 1]."""
    return float(_amount(text, counts=False))


def comma_list(kind: Callable[[str], Any]) -> Callable[[str], tuple[Any, ...]]:
    """``a,b,c`` -> a non-empty tuple of ``kind`` values."""
    def parse(text: str) -> tuple[Any, ...]:
        try:
            values = tuple(kind(x.strip()) for x in text.split(",") if x.strip())
        except (ValueError, argparse.ArgumentTypeError) as exc:
            raise argparse.ArgumentTypeError(f"bad list {text!r}: {exc}") from exc
        if not values:
            raise argparse.ArgumentTypeError(f"empty list {text!r}")
        return values
    return parse


def check_writable(*paths: str | None) -> None:
    """Every given output path's folder exists (before anything long runs)."""
    for path in paths:
        if path and not Path(path).expanduser().resolve().parent.is_dir():
            raise CLIError(f"cannot write {path}: its folder does not exist")
