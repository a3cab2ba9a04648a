"""Final-table assembly: published rows with status daggers beside this run's rows."""

import math

import pandas as pd

from clipsam_lib.paper_tables import (
    DAGGER,
    comparison_long,
    comparison_wide,
    load_published,
    per_category,
)


def _ours():
    return pd.DataFrame([{
        "dataset": "synth_mvtec", "layout": "mvtec", "label": "ClipSAM (this run)",
        "pixel_auroc": 0.9123, "pixel_f1_max": 0.5, "pixel_ap": 0.25,
        "pixel_pro_linear200": 0.8, "pixel_pro_mvtec": math.nan,
        "protocol": "peer", "weights": "random-init", "git_commit": "abc",
        "config_hash": "123", "note": "pixel_pro_mvtec: no anomalous region",
    }])


def test_published_numbers_are_packaged_and_complete():
    published = load_published()
    clipsam = published[published["method"] == "ClipSAM"]
    assert len(clipsam) == 8  # 4 metrics x (MVTec-AD, VisA)
    assert set(published["status"]) <= {"checked", "unchecked"}


def test_long_table_converts_our_fractions_to_percent_and_keeps_sources():
    long = comparison_long(_ours())
    mine = long[long["method"] == "ClipSAM (this run)"].set_index("metric")["value"]
    assert mine["pixel_auroc"] == 91.23 and mine["pixel_pro"] == 80.0
    published = long[long["method"] == "ClipSAM"]
    assert set(published["table_dataset"]) == {"MVTec-AD"}  # only the layouts we evaluated
    assert (published["status"] == "unchecked").all()
    ours = long[long["status"] == "this run"]
    assert (ours["config_hash"] == "123").all() and (ours["git_commit"] == "abc").all()
    assert ours["note"].str.contains("no anomalous region").all()  # why a value may be NaN


def test_wide_table_marks_unchecked_cells_and_missing_ones():
    wide = comparison_wide(comparison_long(_ours())).set_index("method")
    assert wide.loc["ClipSAM", "MVTec-AD AUROC"] == "92.3" + DAGGER
    assert wide.loc["WinCLIP", "MVTec-AD AUROC"] == "85.1"  # checked: no dagger
    assert wide.loc["WinCLIP", "MVTec-AD AP"] == "–"  # not published
    assert wide.loc["ClipSAM (this run)", "MVTec-AD AUROC"] == "91.2"
    assert "peer" in wide.loc["ClipSAM (this run)", "protocol"]
    assert wide.loc["ClipSAM (this run)", "status"] == "this run"
    assert wide.loc["ClipSAM", "status"] == "unchecked"


def test_mvtec_pro_variant_can_be_selected_and_nan_is_shown_as_missing():
    wide = comparison_wide(comparison_long(_ours(), pro_column="pixel_pro_mvtec"))
    assert wide.set_index("method").loc["ClipSAM (this run)", "MVTec-AD PRO"] == "–"


def test_per_category_in_percent():
    evaluation = pd.DataFrame({
        "dataset": ["d", "d"], "cls_name": ["a", "b"], "pixel_auroc": [0.5, 1.0],
        "pixel_f1_max": [0.1, 0.2], "pixel_ap": [0.1, 0.2], "pixel_pro_linear200": [0.3, 0.4],
        "pixel_pro_mvtec": [0.3, math.nan], "note": ["", "no anomalous region"],
    })
    table = per_category(evaluation)
    assert table["pixel_auroc"].tolist() == [50.0, 100.0]
    assert table["note"].tolist() == ["", "no anomalous region"]


def test_image_columns_are_ours_only_and_name_the_image_score():
    ours = _ours().assign(image_auroc=0.7, image_ap=0.6, image_f1_max=0.5,
                          image_score="clip_global")
    wide = comparison_wide(comparison_long(ours)).set_index("method")
    assert wide.loc["ClipSAM (this run)", "MVTec-AD I-AUROC"] == "70.0"
    assert wide.loc["ClipSAM (this run)", "image score"] == "clip_global"
    assert wide.loc["ClipSAM", "MVTec-AD I-AUROC"] == "–"  # the published rows have none
    assert wide.loc["ClipSAM", "image score"] == "–"
    long = comparison_long(ours)
    image_rows = long[long["metric"].str.startswith("image_")]
    assert len(image_rows) == 3 and (image_rows["image_score"] == "clip_global").all()
