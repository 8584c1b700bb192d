"""Tables that fit the terminal: whole columns dropped, the lowest priority first, and the dropped ones
named beneath; text from files anyone may have written made safe to print."""

from __future__ import annotations

import shutil
import textwrap
from dataclasses import dataclass
from typing import Any

from tabulate import tabulate

from ntn.tracking.redact import without_url_credentials


@dataclass
class Column:
    """A column of a table: its header, its cells, and its priority (0 is dropped last)."""

    header: str
    cells: list[str]
    priority: int


def fit(columns: list[Column], width: int, shows_all: str = "a wider terminal or --format csv") -> str:
    """The table, whole columns dropped, the lowest priority first (the rightmost of equals), until it fits
    `width`; a last line then names them, and what shows them (`shows_all`)."""
    shown, dropped = list(columns), []
    while True:
        text = tabulate(
            [list(row) for row in zip(*(c.cells for c in shown))],
            headers=[c.header for c in shown],
            disable_numparse=True,
        )
        if len(shown) == 1 or max(map(len, text.splitlines())) <= width:
            break
        worst = max(range(len(shown)), key=lambda i: (shown[i].priority, i))
        dropped.append(shown.pop(worst).header)
    if dropped:
        text += "\n" + "\n".join(wrapped([f"not shown at this width: {', '.join(dropped)} ({shows_all} shows them)"]))
    return text


def width() -> int:
    """The terminal's width ($COLUMNS first), 120 when there is none (a pipe, a file)."""
    return shutil.get_terminal_size((120, 24)).columns


def wrapped(notes: list[str]) -> list[str]:
    """Each note printable, in lines that fit the terminal (the next ones indented)."""
    return [textwrap.fill(printable(n), width(), subsequent_indent="    ") for n in notes]


def printable(text: Any) -> str:
    """`text` with every control character escaped (\\x1b, \\n, ...): names and errors come from files
    anyone may have written, and a terminal must not act on them; no URL's credentials (a source named)."""
    text = without_url_credentials(str(text))
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)
