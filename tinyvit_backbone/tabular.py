"""The one table writer of the project: typed cells rendered as Markdown, CSV or LaTeX.

A table is built once in memory (:class:`Table` of :class:`Column` and :class:`Cell`) and every
format renders from it, so the Markdown, CSV and LaTeX of one table show the same digits:
rounding happens once, in :meth:`Cell.number_text`. A numeric cell keeps its value and an
optional ± half-width (a 95% CI or a standard deviation, as the column says).

Renderers are pure functions (the same table gives the same bytes). CSV is for machines:
numbers without the ± sign (the half-width in its own ``"<col> ±"`` column), an empty field
where Markdown and LaTeX print "—".
"""
from __future__ import annotations

import csv
import io
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


def simple_table(header, rows, slug: str = "table", title: str = "") -> Table:
    """A table of text cells from plain rows (None = missing): for listings such as search
    candidates, where every value is already formatted."""
    table = Table(slug, title, [Column(str(h)) for h in header])
    for row in rows:
        table.add_row([Cell() if v is None else Cell(text=str(v)) for v in row])
    return table


def text(value: str | None) -> Cell:
    return Cell(text=value) if value not in (None, "") else Cell()


def num(value: float | None, err: float | None = None) -> Cell:
    return Cell(value=None if value is None else float(value),
                err=None if err is None or value is None else float(err))


# ---------------------------------------------------------------------------------- text
def cell_text(cell: Cell, column: Column) -> str:
    """The human-readable text of a cell: "50.2", "84.1 ± 0.7", "n/a" or "—"."""
    if cell.missing:
        return MISSING
    if cell.value is None:
        return cell.text or MISSING
    body = cell.number_text(column.digits)
    if cell.err is not None:
        body += f" ± {cell.err_text(column.digits)}"
    if cell.text:
        body += f" {cell.text}"
    return body


# ---------------------------------------------------------------------------------- Markdown
def _md_escape(s: str) -> str:
    return s.replace("|", "\\|").replace("\n", " ")


def to_markdown(table: Table, heading_level: int = 3) -> str:
    """A heading (none for ``heading_level`` 0), a pipe table (numbers right-aligned) and the
    footnotes as a bullet list."""
    lines = [f"{'#' * heading_level} {table.title}", ""] if heading_level else []
    lines.append("| " + " | ".join(_md_escape(c.name) for c in table.columns) + " |")
    lines.append("|" + "|".join("---:" if c.numeric else ":---" for c in table.columns) + "|")
    for row in table.rows:
        lines.append("| " + " | ".join(_md_escape(cell_text(cell, col))
                                       for cell, col in zip(row, table.columns)) + " |")
    if table.footnotes or not table.rows:
        lines.append("")
    if not table.rows:
        lines.append("- No results in the inputs.")
    lines.extend(f"- {_md_escape(note)}" for note in table.footnotes)
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------- CSV
def to_csv(table: Table) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    header: list[str] = []
    for col in table.columns:
        header.append(col.name)
        if col.with_err:
            header.append(f"{col.name} ±")
    writer.writerow(header)
    for row in table.rows:
        out: list[str] = []
        for cell, col in zip(row, table.columns):
            if col.numeric:
                out.append(cell.number_text(col.digits) if cell.value is not None
                           else (cell.text or ""))
            else:
                out.append(cell.text or "")
            if col.with_err:
                out.append(cell.err_text(col.digits))
        writer.writerow(out)
    return buf.getvalue()


# ---------------------------------------------------------------------------------- LaTeX
_TEX_SPECIAL = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
    "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
    "—": "---", "–": "--", "±": r"$\pm$", "×": r"$\times$", "≥": r"$\geq$", "≤": r"$\leq$",
    "·": r"$\cdot$", "→": r"$\rightarrow$", "<": r"\textless{}", ">": r"\textgreater{}",
    "|": r"\textbar{}",
}


def tex_escape(s: str) -> str:
    return "".join(_TEX_SPECIAL.get(ch, ch) for ch in s)


def to_latex(table: Table) -> str:
    """A ``table`` float with a booktabs ``tabular`` (needs ``\\usepackage{booktabs}``)."""
    spec = "".join("r" if c.numeric else "l" for c in table.columns)
    lines = [
        r"\begin{table}[t]",
        r"\centering",
        r"\caption{" + tex_escape(table.title) + "}",
        r"\label{tab:" + table.slug + "}",
        r"\begin{tabular}{" + spec + "}",
        r"\toprule",
        " & ".join(tex_escape(c.name) for c in table.columns) + r" \\",
        r"\midrule",
    ]
    for row in table.rows:
        lines.append(" & ".join(tex_escape(cell_text(cell, col))
                                for cell, col in zip(row, table.columns)) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    for note in table.footnotes:
        lines.append(r"\par\smallskip{\footnotesize " + tex_escape(note) + "}")
    lines.append(r"\end{table}")
    return "\n".join(lines) + "\n"
