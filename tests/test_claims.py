"""The paper's ablation claims read off hand-made ablation tables."""

from __future__ import annotations

import pandas as pd
import pytest

from clipsam_lib import claims
from clipsam_lib.config import load_profile
from clipsam_lib.tables import latex_escape


def _modules(umci_auroc: float) -> pd.DataFrame:
    """A module table, one direction; every metric of a row the same number."""
    rows = {"CLIP baseline": 0.70, "+UMCI": umci_auroc, "+UMCI+MMR": 0.80}
    return pd.DataFrame([
        {"variant": variant, "train": "a", "dataset": "b", "weights": "w",
         **{metric: value for metric in claims.METRICS}}
        for variant, value in rows.items()])


def test_a_claim_that_holds_and_one_that_fails():
    table = claims.claims_table({"ablation_modules": _modules(umci_auroc=0.75)})
    by_claim = table.groupby("claim")["holds"].all()
    assert by_claim["+UMCI >= CLIP baseline"] and by_claim["+UMCI+MMR >= +UMCI"]

    table = claims.claims_table({"ablation_modules": _modules(umci_auroc=0.65)})
    failing = table[table["claim"] == "+UMCI >= CLIP baseline"]
    assert not failing["holds"].any()
    assert failing["gap"].tolist() == pytest.approx([-0.05] * len(claims.METRICS))
    assert set(table["weights"]) == {"w"}  # provenance travels with the row
    shown = claims.shown_table(table).set_index("claim")
    assert shown.loc["+UMCI >= CLIP baseline", "P-AUROC"] == "65.0 vs 70.0 ✗"
    assert shown.loc["+UMCI >= CLIP baseline", "holds"] == "0/4"
    assert shown.loc["+UMCI+MMR >= +UMCI", "F1-max"] == "80.0 vs 65.0"


def test_a_gap_under_the_tie_is_marked_and_counted_as_holding():
    table = claims.claims_table({"ablation_modules": _modules(umci_auroc=0.6995)})
    shown = claims.shown_table(table).set_index("claim")
    assert shown.loc["+UMCI >= CLIP baseline", "AP"] == "70.0 vs 70.0 ≈"
    assert shown.loc["+UMCI >= CLIP baseline", "holds"] == "4/4"


def test_tables_not_run_are_left_out_and_a_missing_row_is_named():
    assert set(claims.claims_table({"ablation_modules": _modules(0.75)})["table"]) == {
        "ablation_modules"}
    broken = _modules(0.75).query("variant != '+UMCI'")
    with pytest.raises(ValueError, match=r"'\+UMCI' trained on a and tested on b"):
        claims.claims_table({"ablation_modules": broken})


def test_the_written_table_renders_its_marks_in_latex(tmp_path, monkeypatch):
    monkeypatch.setenv("CLIPSAM_RESULTS_DIR", str(tmp_path))
    claims.write_claims_table(load_profile("smoke"), {"ablation_modules": _modules(0.65)})
    tex = next(tmp_path.rglob("paper_claims.tex")).read_text()
    assert r"65.0 vs 70.0 $\times$" in tex and "✗" not in tex
    assert latex_escape("± ≈") == r"$\pm$ $\approx$"


def test_the_sweeps_default_is_the_profiles_own_value():
    profile = load_profile("smoke", **{"umci.hidden_dim": 512, "mmr.threshold": 0.3})
    found = claims.sweep_default_claims(profile)
    better = {claim.table: claim.better for claim in found}
    assert better == {"hp_hidden_dim": "d = 512", "hp_kernels": "k = (2, 4)",
                      "hp_threshold": "theta = 0.3"}
    assert len(found) == (len(profile.sweep_hidden_dims) - 1 + len(profile.sweep_kernels) - 1
                          + len(profile.sweep_thresholds) - 1)
    assert {claim.source for claim in found} == {"default"}
