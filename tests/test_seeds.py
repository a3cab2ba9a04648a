"""train.seeds: tables are means over seeds with their standard deviation (checked by hand),
per-seed rows kept; train.eval_epochs: the chosen epochs' checkpoints are evaluated too."""

from __future__ import annotations

import math
import warnings

import pandas as pd
import pytest
from synthetic_defects import tiny_profile

from clipsam_lib import ablations, final_tables, paths
from clipsam_lib.config import Direction
from clipsam_lib.workspace import Workspace

pytestmark = [pytest.mark.usefixtures("one_torch_thread"), pytest.mark.slow]

BASELINE = {"umci.enabled": False, "mmr.enabled": False}


@pytest.fixture(autouse=True)
def quiet():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*random.*")
        yield


def test_seed_mean_and_std_match_a_hand_computation(tmp_path):
    profile = tiny_profile(tmp_path, **{"train.seeds": [3, 4], "train.epochs":
                                        {"mvtec": 1, "visa": 1}})
    ws = Workspace(profile)
    runs = ablations.run_variant(ws, BASELINE, "baseline", Direction("src", ["dst"]))
    assert [r.profile.train.seed for r in runs] == [3, 4]
    a, b = (float(r.mean["pixel_auroc"]) for r in runs)
    assert a != b  # two seeds, two trainings
    table = ablations.table_rows(runs)
    assert len(table) == 1 and table.loc[0, "seeds"] == "3,4"
    assert math.isclose(table.loc[0, "pixel_auroc"], (a + b) / 2, abs_tol=1e-12)
    assert math.isclose(table.loc[0, "pixel_auroc_std"], abs(a - b) / math.sqrt(2),
                        abs_tol=1e-12)  # sample std of two values
    per_seed = ablations.table_rows(runs, per_seed=True)
    assert per_seed["seed"].tolist() == [3, 4] and per_seed["pixel_auroc"].tolist() == [a, b]
    written = ablations.write_rows(profile, runs, "seed_check", caption="seeds",
                                   shown=["variant", "train", "dataset", "P-AUROC (%)"])
    folder = paths.results_subdir(profile, "tables")
    assert len(pd.read_csv(folder / "seed_check_per_seed.csv")) == 2
    assert "P-AUROC std (%)" in (folder / "seed_check.md").read_text()
    assert written.loc[0, "seed"] == "mean"


def test_eval_epochs_evaluates_each_chosen_checkpoint(tmp_path):
    profile = tiny_profile(tmp_path, **{"train.eval_epochs": [1], "train.epochs":
                                        {"mvtec": 2, "visa": 2}, **BASELINE})
    profile.directions = [Direction("src", ["dst"])]
    table = final_tables.write_epoch_table(Workspace(profile))
    assert table["epoch"].tolist() == [1, 2] and table["last"].tolist() == [False, True]
    assert table["pixel_auroc"].nunique() == 2  # the epoch moves the numbers
    assert (paths.results_subdir(profile, "tables") / "final_epochs.md").is_file()
    assert final_tables.write_epoch_table(Workspace(tiny_profile(tmp_path / "none"))) is None
