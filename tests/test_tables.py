"""write_table: CSV keeps exact values; Markdown and LaTeX are formatted and escaped."""

import math

import pandas as pd

from clipsam_lib.tables import latex_escape, write_table


def test_write_table_writes_three_formats(tmp_path):
    df = pd.DataFrame({"cls_name": ["metal_nut", "mean"], "pixel_auroc": [91.26, math.nan]})
    paths = write_table(df, tmp_path / "t", caption="Rough maps (%)")
    assert sorted(paths) == ["csv", "md", "tex"]
    back = pd.read_csv(paths["csv"])
    assert back["pixel_auroc"].iloc[0] == 91.26 and math.isnan(back["pixel_auroc"].iloc[1])
    md = paths["md"].read_text()
    assert "| metal_nut | 91.3 |" in md and "| mean | n/a |" in md
    tex = paths["tex"].read_text()
    assert r"metal\_nut & 91.3 \\" in tex and r"Rough maps (\%)" in tex
    assert tex.count(r"\toprule") == 1 and tex.count(r"\bottomrule") == 1


def test_display_columns_limit_the_rendering_not_the_csv(tmp_path):
    df = pd.DataFrame({"a": [1.0], "git_commit": ["abc"]})
    paths = write_table(df, tmp_path / "t", display_columns=["a"])
    assert "git_commit" in paths["csv"].read_text()
    assert "git_commit" not in paths["md"].read_text()


def test_latex_escape():
    assert latex_escape("a_b & 5% #1") == r"a\_b \& 5\% \#1"


def test_rendered_frame_replaces_the_markdown_but_not_the_csv(tmp_path):
    long = pd.DataFrame({"variant": ["a", "a"], "dataset": ["x", "y"], "v": [1.0, 2.0]})
    wide = pd.DataFrame({"variant": ["a"], "x": [1.0], "y": [2.0]})
    paths = write_table(long, tmp_path / "t", rendered=wide)
    assert pd.read_csv(paths["csv"]).shape == (2, 3)
    assert "| a | 1.0 | 2.0 |" in paths["md"].read_text()
