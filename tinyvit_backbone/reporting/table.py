"""The in-memory table every renderer reads: typed cells, so Markdown, CSV and LaTeX agree.

A numeric cell keeps its value and an optional ± half-width (a 95% CI or a standard deviation,
as the column says); rounding happens once, in :func:`Cell.number_text`, so every format shows
the same digits.
"""
from __future__ import annotations

from dataclasses import dataclass, field

MISSING = "—"


@dataclass(frozen=True)
class Cell:
    """``value`` None and ``text`` None means missing (rendered "—"); ``text`` is used for
    non-numeric cells and for numeric cells that carry a note instead of a number ("n/a")."""

    value: float | None = None
    err: float | None = None
    text: str | None = None

    def number_text(self, digits: int) -> str:
        return "" if self.value is None else f"{self.value:.{digits}f}"

    def err_text(self, digits: int) -> str:
        return "" if self.err is None else f"{self.err:.{digits}f}"

    @property
    def missing(self) -> bool:
        return self.value is None and self.text is None


@dataclass(frozen=True)
class Column:
    """``numeric`` columns are right-aligned and round to ``digits``; ``with_err`` columns get a
    second CSV column ``"<name> ±"`` for the half-width."""

    name: str
    numeric: bool = False
    digits: int = 1
    with_err: bool = False


@dataclass
class Table:
    """``slug`` names the output files (``<slug>.md`` / ``.csv`` / ``.tex``)."""

    slug: str
    title: str
    columns: list[Column]
    rows: list[list[Cell]] = field(default_factory=list)
    footnotes: list[str] = field(default_factory=list)

    def add_row(self, cells: list[Cell]) -> None:
        if len(cells) != len(self.columns):
            raise ValueError(f"table {self.slug}: row has {len(cells)} cells, "
                             f"{len(self.columns)} columns")
        self.rows.append(cells)


def text(value: str | None) -> Cell:
    return Cell(text=value) if value not in (None, "") else Cell()


def num(value: float | None, err: float | None = None) -> Cell:
    return Cell(value=None if value is None else float(value),
                err=None if err is None or value is None else float(err))
