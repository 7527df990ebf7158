"""Exceptions with messages a user can act on."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class GencvError(Exception):
    """Base class for errors gencv reports to the user (the CLI exits with code 2)."""


class SpecError(GencvError, ValueError):
    """The experiment spec is unreadable or invalid; the message names field, value and fix."""


class DataError(GencvError, ValueError):
    """The data cannot be used as given (missing column, NaN, too few samples...)."""


class SplitError(GencvError, ValueError):
    """The CV scheme does not fit the data (too many splits, class too small...)."""


class DivergenceError(GencvError, RuntimeError):
    """The training loss became NaN or infinite."""

    def __init__(self, message: str, *, epoch: int | None = None, batch: int | None = None) -> None:
        super().__init__(message)
        self.epoch = epoch
        self.batch = batch


class TrackingError(GencvError, RuntimeError):
    """The tracking backend refused or lost a run."""


class Terminated(KeyboardInterrupt):
    """SIGTERM, delivered like Ctrl-C so every `except KeyboardInterrupt` cleans up the same way.

    A subclass, not KeyboardInterrupt itself: CPython remembers a bare KeyboardInterrupt that crossed
    certain C boundaries and then ends the process with SIGINT at exit, even after we caught it and
    chose exit code 130.
    """


def did_you_mean(value: str, choices: Iterable[str]) -> str:
    """Return ' Did you mean 'x'?' for the closest choice, or ''."""
    match = difflib.get_close_matches(str(value), list(choices), n=1, cutoff=0.6)
    return f" Did you mean '{match[0]}'?" if match else ""
