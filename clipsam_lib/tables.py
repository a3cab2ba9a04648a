"""Results tables as files: CSV (exact values), Markdown and LaTeX (formatted).

The CSV keeps full precision and every provenance column; the Markdown and LaTeX
renderings are for reading and for the paper-style tables.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from clipsam_lib.io_utils import write_text_atomic

_LATEX_SPECIAL = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
    "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\^{}",
    # Symbols the Markdown renderings use that LaTeX's default UTF-8 input does not define.
    "±": r"$\pm$", "✗": r"$\times$", "≈": r"$\approx$",
}


def latex_escape(text: str) -> str:
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in str(text))


def _format_cell(value: object, floatfmt: str) -> str:
    if isinstance(value, float):
        return "n/a" if math.isnan(value) else format(value, floatfmt)
    return str(value)


def to_markdown(df: pd.DataFrame, floatfmt: str = ".1f") -> str:
    header = "| " + " | ".join(str(c) for c in df.columns) + " |"
    rule = "|" + "|".join("---" for _ in df.columns) + "|"
    rows = [
        "| " + " | ".join(_format_cell(v, floatfmt) for v in row) + " |"
        for row in df.itertuples(index=False)
    ]
    return "\n".join([header, rule, *rows]) + "\n"


def to_latex(df: pd.DataFrame, caption: str = "", floatfmt: str = ".1f", label: str = "") -> str:
    """A booktabs table; text columns left-aligned, numeric ones right-aligned."""
    align = "".join("r" if pd.api.types.is_numeric_dtype(df[c]) else "l" for c in df.columns)
    lines = [r"\begin{table}[t]", r"\centering"]
    if caption:
        lines.append(rf"\caption{{{latex_escape(caption)}}}")
    if label:
        lines.append(rf"\label{{{label}}}")
    lines += [rf"\begin{{tabular}}{{{align}}}", r"\toprule"]
    lines.append(" & ".join(latex_escape(c) for c in df.columns) + r" \\")
    lines.append(r"\midrule")
    for row in df.itertuples(index=False):
        lines.append(" & ".join(latex_escape(_format_cell(v, floatfmt)) for v in row) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def write_table(
    df: pd.DataFrame,
    stem: str | Path,
    *,
    caption: str = "",
    floatfmt: str = ".1f",
    display_columns: list[str] | None = None,
    rendered: pd.DataFrame | None = None,
) -> dict[str, Path]:
    """Write ``stem.csv`` (all columns, full precision), ``stem.md`` and ``stem.tex``.

    ``display_columns`` picks the columns of the Markdown/LaTeX renderings (default: all);
    ``rendered`` replaces them with another frame (e.g. the paper's wide layout of a long
    CSV). Returns the three paths. Each file is written atomically.
    """
    stem = Path(stem)
    shown = rendered if rendered is not None else df
    shown = shown[display_columns] if display_columns else shown
    paths = {
        "csv": stem.with_suffix(".csv"),
        "md": stem.with_suffix(".md"),
        "tex": stem.with_suffix(".tex"),
    }
    write_text_atomic(paths["csv"], df.to_csv(index=False))
    md = (f"**{caption}**\n\n" if caption else "") + to_markdown(shown, floatfmt)
    write_text_atomic(paths["md"], md)
    write_text_atomic(paths["tex"], to_latex(shown, caption, floatfmt, label=f"tab:{stem.name}"))
    return paths
