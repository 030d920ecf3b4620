"""Terminal-safe output with the standard library only: control characters made visible,
timestamps as tables show them, JSON lines, and a box table drawn like rich's default.

`logly ip` and `logly ips` print through this module (logly/cli_ip.py), so a new process
answers without loading rich (about 35 ms of imports, most of the 50 ms that command has).
Log content is attacker-controlled: every cell goes through `safe_text`, JSON is ASCII.
"""

from __future__ import annotations

import json
import os
import re

TYPE_CHECKING = False  # typing costs milliseconds of start-up; annotations only
if TYPE_CHECKING:
    from typing import IO, Any

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
PIPED_WIDTH = 160  # piped output is not squeezed into 80 columns


def safe_text(text: str | None) -> str:
    """Text with control characters made visible, fit for a terminal."""
    if not text:
        return ""
    return _CONTROL.sub(lambda m: f"\\x{ord(m[0]):02x}", text)


def when(stamp: str | None, missing: str = "-") -> str:
    """A stored UTC timestamp as a table shows it: to the second, no T."""
    return stamp[:19].replace("T", " ") if stamp else missing


def json_line(data: Any) -> str:
    # ensure_ascii: no raw control or C1 bytes from log content reach the terminal
    return json.dumps(data, ensure_ascii=True, indent=None) + "\n"


def width_of(out: IO[str]) -> int:
    """Columns to fit: $COLUMNS, else the terminal's, else PIPED_WIDTH (as rich decides)."""
    cols = os.environ.get("COLUMNS", "")
    if cols.isdigit() and int(cols) > 0:
        return int(cols)
    try:
        if out.isatty():
            return os.get_terminal_size(out.fileno()).columns
    except (AttributeError, ValueError, OSError):
        pass
    return PIPED_WIDTH


def cells(text: str) -> int:
    """Terminal columns `text` takes: East Asian wide characters two, combining marks none."""
    if text.isascii():
        return len(text)
    import unicodedata

    return sum(0 if unicodedata.combining(c) else
               2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


def lines(text: str, width: int = PIPED_WIDTH) -> str:
    """`text` wrapped to `width` columns, one line after another (as rich prints text)."""
    return "\n".join(_fold(safe_text(text), width)) + "\n"


def _fold(text: str, width: int) -> list[str]:
    """Word-wrap to `width` columns; a word longer than that is cut into pieces."""
    lines: list[str] = []
    for para in text.split("\n"):
        line = ""
        for word in para.split(" "):
            while cells(word) > width:
                if line:
                    lines.append(line)
                    line = ""
                cut = width
                while cut > 1 and cells(word[:cut]) > width:
                    cut -= 1
                lines.append(word[:cut])
                word = word[cut:]
            if not line:
                line = word
            elif cells(line) + 1 + cells(word) <= width:
                line += " " + word
            else:
                lines.append(line)
                line = word
        lines.append(line)
    return lines


class Table:
    """Rows of text under headers, in a box. Short fields never wrap; the last column (a
    message) folds to fit the width. Cells are made safe when added."""

    def __init__(self, *headers: str, title: str | None = None) -> None:
        self.headers = list(headers)
        self.title = title
        self.show_header = True
        self.rows: list[list[str]] = []

    def add_row(self, *values: Any) -> None:
        self.rows.append(["" if v is None else safe_text(str(v)) for v in values])

    def render(self, width: int = PIPED_WIDTH) -> str:
        n = len(self.headers)
        shown = [self.headers, *self.rows] if self.show_header else self.rows
        widths = [max([cells(r[i]) for r in shown] + [1 if self.show_header else 0])
                  for i in range(n)]
        room = width - sum(widths[:-1]) - 3 * n - 1  # borders and one space each side
        if widths[-1] > room:
            widths[-1] = max(room, 6)
        out = []
        if self.title:  # padded to the table's width, as rich does
            title = safe_text(self.title)
            out.append(title + " " * (sum(widths) + 3 * n + 1 - cells(title)))
        if self.show_header:
            out.append(_rule("┏", "━", "┳", "┓", widths))
            out.extend(_lines(self.headers, widths, "┃"))
            out.append(_rule("┡", "━", "╇", "┩", widths))
        else:
            out.append(_rule("┌", "─", "┬", "┐", widths))
        for row in self.rows:
            out.extend(_lines(row, widths, "│"))
        out.append(_rule("└", "─", "┴", "┘", widths))
        return "\n".join(out) + "\n"


def _rule(left: str, fill: str, cross: str, right: str, widths: list[int]) -> str:
    return left + cross.join(fill * (w + 2) for w in widths) + right


def _lines(row: list[str], widths: list[int], bar: str) -> list[str]:
    parts = [[c] for c in row[:-1]] + [_fold(row[-1], widths[-1])]
    out = []
    for k in range(max(len(p) for p in parts)):
        cols = []
        for p, w in zip(parts, widths, strict=True):
            text = p[k] if k < len(p) else ""
            cols.append(" " + text + " " * (w - cells(text)) + " ")
        out.append(bar + bar.join(cols) + bar)
    return out
