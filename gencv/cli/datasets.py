"""`gencv datasets`: the data sources a spec can name."""

from __future__ import annotations

from rich.table import Table

from gencv.cli.common import out


def datasets() -> None:
    """List the data sources a spec can name in data.source.

    Example: gencv datasets
    """
    from gencv.data import describe_sources

    t = Table(title="data sources")
    for c in ("source", "task", "description"):
        t.add_column(c)
    for row in describe_sources():
        t.add_row(*row)
    out.print(t)

