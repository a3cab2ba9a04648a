"""Other draws of the embedded benchmark (clipsam_lib.draws): which workspace a draw gets,
and the spread and comparison tables against numpy and hand-counted cases. No backbone
runs here; tests/test_method_miniature.py runs real draws."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from clipsam_lib import draws, paths
from clipsam_lib.config import load_profile
from clipsam_lib.provenance import provenance_columns
from clipsam_lib.workspace import Workspace


def _rows(values: dict[tuple[int, str], dict[str, float]]) -> list[dict]:
    """Rows of one direction: {(draw, variant): metrics}; missing metrics are 0.5."""
    provenance = provenance_columns(load_profile("smoke"))
    rows = []
    for (draw, variant), metrics in values.items():
        rows.append({"draw": draw, "train": "a", "dataset": "b", "variant": variant,
                     **{m: metrics.get(m, 0.5) for m in draws.METRICS}, "note": "",
                     **provenance, "dataset_index_hash": f"h{draw}"})
    return rows


def test_the_profiles_own_draw_is_its_workspace_and_another_gets_its_own_folders():
    ws = Workspace(load_profile("smoke"))
    assert draws.draw_workspace(ws, ws.profile.synthetic_seed) is ws
    other = draws.draw_workspace(ws, 3)
    assert other.profile.synthetic_seed == 3
    assert other.profile.data_dir == f"{ws.profile.data_dir}-draws/seed3"
    assert other.profile.cache_dir == f"{ws.profile.cache_dir}-draws/seed3"
    assert other.profile.hash() != ws.profile.hash()  # its UMCI runs and maps are its own
    assert paths.dataset_root(other.profile, "synth_mvtec") == (
        paths.project_root() / "data" / "smoke-draws" / "seed3" / "synth_mvtec")


def test_another_draw_holds_only_the_chosen_directions_and_their_datasets():
    ws = Workspace(load_profile("smoke"))
    both = draws.draw_workspace(ws, 3).profile
    assert [s.name for s in both.datasets] == ["synth_mvtec", "synth_visa"]  # no MTD, KSDD2
    assert [(d.train, d.test, d.generalization) for d in both.directions] == [
        ("synth_visa", ["synth_mvtec"], []), ("synth_mvtec", ["synth_visa"], [])]
    first = draws.draw_workspace(ws, 3, directions=[0]).profile
    assert [d.train for d in first.directions] == ["synth_visa"]
    assert {s.name for s in first.datasets} == {"synth_visa", "synth_mvtec"}


def test_a_profile_with_real_datasets_has_no_other_draw():
    with pytest.raises(ValueError, match="'paper'.*only for synthetic"):
        draws.draw_workspace(Workspace(load_profile("paper")), 1)


def test_the_spread_is_numpys_mean_sd_min_and_max():
    aurocs = [0.70, 0.81, 0.76, 0.92]
    rows = _rows({(d, "+UMCI"): {"pixel_auroc": a} for d, a in enumerate(aurocs)})
    rows.append({"draw": 0, "train": "", "dataset": "b", "variant": draws.SAM_ROW,
                 "sam_median_iou": 0.55, "note": draws.SAM_NOTE, "dataset_index_hash": "h0"})
    spread = draws.spread_table(rows).set_index("variant")
    umci = spread.loc["+UMCI"]
    assert umci["draws"] == 4
    assert umci["pixel_auroc_mean"] == pytest.approx(np.mean(aurocs), abs=1e-12)
    assert umci["pixel_auroc_std"] == pytest.approx(np.std(aurocs, ddof=1), abs=1e-12)
    assert (umci["pixel_auroc_min"], umci["pixel_auroc_max"]) == (0.70, 0.92)
    sam = spread.loc[draws.SAM_ROW]
    assert sam["sam_median_iou_mean"] == 0.55 and pd.isna(sam["pixel_auroc_mean"])
    assert "no map" in sam["note"] and "one draw" in sam["note"]  # why its gaps are empty


def test_comparisons_count_the_draws_by_hand():
    # Draw 0: MMR above the rough map's F1-max; draw 1: equal (fails '>'); draw 2: below.
    # +UMCI P-AUROC equal to the baseline's on draw 1 holds ('>=').
    f1 = {0: (0.10, 0.15), 1: (0.12, 0.12), 2: (0.20, 0.18)}
    auroc = {0: (0.80, 0.82), 1: (0.79, 0.79), 2: (0.85, 0.83)}
    values = {}
    for d in range(3):
        values[(d, "CLIP baseline")] = {"pixel_auroc": auroc[d][0], "pixel_f1_max": 0.05}
        values[(d, "+UMCI")] = {"pixel_auroc": auroc[d][1], "pixel_f1_max": f1[d][0]}
        values[(d, "+UMCI+MMR")] = {"pixel_f1_max": f1[d][1]}
    counts = draws.comparison_counts(_rows(values)).set_index("comparison")
    mmr = counts.loc["MMR > rough map, F1-max"]
    assert (mmr["draws"], mmr["holds_on"], mmr["draws_failing"]) == (3, 1, "1 2")
    assert mmr["gap_min"] == pytest.approx(-0.02) and mmr["gap_max"] == pytest.approx(0.05)
    assert mmr["gap_mean"] == pytest.approx((0.05 + 0.0 - 0.02) / 3)
    umci = counts.loc["+UMCI >= baseline, P-AUROC"]
    assert (umci["holds_on"], umci["draws_failing"]) == (2, "2")
    full = counts.loc["+UMCI+MMR > baseline, F1-max"]
    assert (full["holds_on"], full["draws_failing"]) == (3, "none")


def test_the_tables_are_written_with_provenance(tmp_path, monkeypatch):
    monkeypatch.setenv("CLIPSAM_RESULTS_DIR", str(tmp_path))
    ws = Workspace(load_profile("smoke"))
    values = {(d, v): {"pixel_auroc": 0.7 + 0.01 * d} for d in range(2)
              for v in draws.VARIANTS}
    tables = draws.write_spread_tables(ws, _rows(values))
    folder = tmp_path / "smoke" / "tables"
    for name in ("draw_rows", "draw_spread", "draw_comparisons"):
        for suffix in (".csv", ".md", ".tex"):
            assert (folder / f"{name}{suffix}").stat().st_size > 0
        written = pd.read_csv(folder / f"{name}.csv")
        assert {"profile", "config_hash", "weights", "git_commit"} <= set(written.columns)
    assert pd.read_csv(folder / "draw_rows.csv")["dataset_index_hash"].tolist()[:2] == [
        "h0", "h0"]  # each draw names its own test set
    for name in ("draw_spread", "draw_comparisons"):  # and a row over draws names them all
        assert pd.read_csv(folder / f"{name}.csv")["dataset_index_hash"].iloc[0] == "h0 h1"
    assert "70.5 ± 0.7 [70.0, 71.0]" in (folder / "draw_spread.md").read_text()
    sam_rows = _rows({})
    sam_rows.append({"draw": 0, "train": "", "dataset": "b", "variant": draws.SAM_ROW,
                     "sam_median_iou": 0.554, "note": draws.SAM_NOTE,
                     "dataset_index_hash": "h0"})
    draws.write_spread_tables(ws, _rows(values) + sam_rows)
    assert "| 0.554 |" in (folder / "draw_rows.md").read_text()  # not rounded to 0.6
    assert len(tables["draw_comparisons"]) == len(draws.COMPARISONS)


def test_a_smoke_profile_on_the_users_folders_loads_and_has_no_other_draw(tmp_path):
    """spread_draws stays valid (the smoke profile pointed at real folders must work);
    the draws themselves are refused, naming the real dataset."""
    profile = load_profile("smoke", datasets=[{"name": "mine", "layout": "mvtec",
                                                "root": str(tmp_path)}],
                           directions=[{"train": "mine", "test": ["mine"]}])
    assert profile.spread_draws and draws.real_datasets(profile) == ["mine"]
    with pytest.raises(ValueError, match="'smoke'.*mine.*spread_draws"):
        draws.draw_workspace(Workspace(profile), 1)
