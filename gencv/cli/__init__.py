"""The `gencv` command line: parse, set up logging and tracking, call one library function, render."""

from __future__ import annotations

from gencv.cli.app import app, main

__all__ = ["app", "main"]
