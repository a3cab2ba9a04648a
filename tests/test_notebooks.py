"""Every notebook, headless through papermill, in the smoke profile (what CI and the
README's main command run): the tables and figures the issues promise exist, carry their
columns and provenance, and no value is missing without a stated reason.

One run for the module, into a temporary results folder shared with the miniature's tests
(the UMCIs both train are trained once); the embedded benchmark and the feature caches
are shared with the project (they are keyed by content, so reusing them changes no
number). The profile is smoke.yaml with fewer other draws of the benchmark (TEST_DRAWS).
"""

from __future__ import annotations

import json
import re

import nbformat
import pandas as pd
import pytest
import yaml

from clipsam_lib import cleanup
from clipsam_lib.config import CONFIG_DIR
from clipsam_lib.paths import project_root
from clipsam_lib.runner import numbered_notebooks, run_notebooks

pytestmark = [pytest.mark.notebook, pytest.mark.slow]

PROVENANCE = ["profile", "config_hash", "git_commit", "weights", "dataset_index_hash",
              "protocol", "date"]
PIXEL = ["pixel_auroc", "pixel_f1_max", "pixel_ap", "pixel_pro_linear200", "pixel_pro_mvtec"]
IMAGE = ["image_auroc", "image_ap", "image_f1_max", "image_score"]

# table stem -> columns its CSV must have (every one also has csv, md and tex files)
TABLES: dict[str, list[str]] = {
    "data_counts": ["dataset", "class", "train", "test normal", "test anomalous"],
    "umci_rough_maps": ["train", "dataset", "model", "cls_name", "pixel_auroc", "note",
                        *PROVENANCE],
    **{f"ablation_{name}": ["variant", "train", "dataset", *PIXEL, *IMAGE, "note", *PROVENANCE]
       for name in ("modules", "umci_paths", "prompts", "mask_levels", "fusion",
                    "peer_conventions")},
    **{f"hp_{name}": ["variant", "train", "dataset", *PIXEL, "note", *PROVENANCE]
       for name in ("hidden_dim", "kernels", "threshold")},
    **{f"final_{part}_pro_{pro}": ["method", "status", "protocol", "image score"]  # '–': none
       for part in ("main", "generalization") for pro in ("linear200", "mvtec")},
    **{f"final_{part}_pro_{pro}_long": ["method", "status", "protocol", "metric", "value",
                                       "source", "note", "image_score", "config_hash",
                                       "git_commit"]
       for part in ("main", "generalization") for pro in ("linear200", "mvtec")},
    "final_protocols": ["dataset", "protocol", "resolution", *PIXEL, "note"],
    "sam_gt_box_iou": ["dataset", "regions", "median_iou", "mean_iou", "share_iou_ge_0.5",
                       "median_best_of_3", "median_grid_ceiling", "median_area_ratio",
                       *PROVENANCE],
    "sam_gt_box_iou_by_defect": ["dataset", "defect", "regions", "median_iou",
                                 "median_best_of_3", "median_grid_ceiling",
                                 "median_area_ratio", *PROVENANCE],
    "mmr_pointing": ["variant", "train", "dataset", "anomalous_images", "map_hit", "chance",
                     "prompts_on_defect", "images_with_a_prompt_on_defect", "note",
                     *PROVENANCE],
    "clip_stage_probe": ["train", "dataset", "reading", "stage", "pixel_auroc", "pixel_ap",
                         "pixel_f1_max", "note", *PROVENANCE],
    "draw_rows": ["draw", "train", "dataset", "variant", "pixel_auroc", "pixel_f1_max",
                  "pixel_ap", "pixel_pro_mvtec", "sam_median_iou", "note", *PROVENANCE],
    "draw_spread": ["train", "dataset", "variant", "draws", "pixel_auroc_mean",
                    "pixel_auroc_std", "pixel_auroc_min", "pixel_auroc_max",
                    "sam_median_iou_mean", "note", *PROVENANCE],
    "draw_comparisons": ["train", "dataset", "comparison", "draws", "holds_on", "gap_min",
                         "gap_mean", "gap_max", "draws_failing", *PROVENANCE],
    **{name: ["claim", "source", "table", "train", "dataset", "metric", "better", "worse",
              "gap", "holds", *PROVENANCE] for name in ("paper_claims", "hp_defaults")},
}
PER_CATEGORY = ["synth_mvtec", "synth_visa", "synth_mtd", "synth_ksdd2"]
FIGURES = ["data_samples", "umci_loss_curves", "qualitative", "qualitative_prompt_on_defect",
           "mmr_steps", "sam_gt_box", "final_bars"]


# Notebook 02 runs the module ablation on the profile's other draws of the benchmark
# (smoke: 7, about 37 s each); three show the tables are made, and their UMCIs on draws 1-3
# are the ones tests/test_method_miniature.py trains for both directions.
TEST_DRAWS = [1, 2, 3]


@pytest.fixture(scope="module")
def results(smoke_results_dir, tmp_path_factory):
    smoke = yaml.safe_load((CONFIG_DIR / "smoke.yaml").read_text())
    assert len(smoke["spread_draws"]) > len(TEST_DRAWS)  # the narrowing is a narrowing
    profile = tmp_path_factory.mktemp("profile") / "smoke.yaml"  # same name: results/smoke
    profile.write_text(yaml.safe_dump({**smoke, "spread_draws": TEST_DRAWS}))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CLIPSAM_RESULTS_DIR", str(smoke_results_dir))
        mp.setenv("HF_HUB_OFFLINE", "1")
        runs = run_notebooks(str(profile))
    return smoke_results_dir / "smoke", runs


def test_every_numbered_notebook_ran_without_an_error_output(results):
    folder, runs = results
    expected = [p.name for p in numbered_notebooks(project_root() / "notebooks")]
    assert [r.name for r in runs] == expected and len(expected) >= 5
    log = json.loads((folder / "notebooks" / "run_log.json").read_text())
    assert [n["name"] for n in log["notebooks"]] == expected
    for name in expected:
        nb = nbformat.read(folder / "notebooks" / name, as_version=4)
        errors = [o for c in nb.cells if c.cell_type == "code"
                  for o in c.get("outputs", []) if o.get("output_type") == "error"]
        assert not errors, f"{name}: {errors[:1]}"


def test_the_complete_run_is_recorded_and_used_every_folder_it_keeps(results):
    """What `clipsam clean` relies on, at the real run's size: the run is recorded as
    complete, and every UMCI and map folder in its results folder (the miniature tests'
    UMCIs, trained there first, included) was stamped by a stage of this run."""
    folder, _ = results
    runs = json.loads((folder / cleanup.RUNS_FILE).read_text())
    assert list(runs) == [str(folder)]
    keyed = cleanup.keyed_folders("results", folder)
    unused = [f.relative_to(folder).as_posix() for f in keyed
              if (cleanup.last_used(f) or 0.0) < runs[str(folder)]["started"]]
    assert len(keyed) > 50 and not unused, unused


@pytest.mark.parametrize("stem", [*TABLES, *(f"final_per_category_{d}" for d in PER_CATEGORY)])
def test_table_exists_in_three_formats_with_its_columns(results, stem):
    folder, _ = results
    for suffix in (".csv", ".md", ".tex"):
        path = folder / "tables" / f"{stem}{suffix}"
        assert path.is_file() and path.stat().st_size > 0, path
    table = pd.read_csv(folder / "tables" / f"{stem}.csv")
    assert len(table) > 0
    missing = set(TABLES.get(stem, [])) - set(table.columns)
    assert not missing, f"{stem}.csv lacks {sorted(missing)}"
    assert "\\begin{tabular}" in (folder / "tables" / f"{stem}.tex").read_text()


METRIC = re.compile(r"^(pixel_|image_(?!score))|\(%\)$|^value$")  # image_score is a name


def _unexplained_gaps(table: pd.DataFrame) -> list[str]:
    """Rows with a missing metric but no note saying why."""
    metrics = [c for c in table.columns if METRIC.search(c)]
    note = table["note"] if "note" in table else pd.Series([""] * len(table))
    gaps = []
    for i, row in table.iterrows():
        empty = [c for c in metrics if pd.isna(row[c])]
        reason = note.iloc[i]
        if empty and (not isinstance(reason, str) or not reason.strip()):
            gaps.append(f"row {i}: {empty}")
    return gaps


def test_the_gap_check_itself_flags_a_nan_without_a_note():
    table = pd.DataFrame({"pixel_auroc": [0.5, float("nan"), float("nan")],
                          "n_images": [1, 2, 3],
                          "note": ["", "pixel_auroc: no anomalous pixel", float("nan")]})
    assert _unexplained_gaps(table) == ["row 2: ['pixel_auroc']"]


def test_no_value_is_missing_without_a_stated_reason(results):
    folder, _ = results
    tables = sorted((folder / "tables").glob("*.csv"))
    assert len(tables) >= len(TABLES)
    problems = {}
    for path in tables:
        gaps = _unexplained_gaps(pd.read_csv(path))
        if gaps:
            problems[path.name] = gaps[:3]
    assert not problems, problems


def test_results_rows_name_the_mini_weights_and_carry_provenance(results):
    from clipsam_lib.mini import RECIPES, recipe_hash

    folder, _ = results
    rows = pd.read_csv(folder / "tables" / "ablation_modules.csv")
    hashes = [f"mini-pretrained:{recipe_hash(RECIPES[k])}" for k in ("clip", "sam")]
    assert rows["weights"].map(lambda w: all(h in w for h in hashes)).all()
    assert rows["profile"].eq("smoke").all() and rows["config_hash"].notna().all()
    final = pd.read_csv(folder / "tables" / "final_main_pro_linear200_long.csv")
    ours = final[final["status"].eq("this run")]
    assert ours["method"].nunique() == 2
    assert ours["method"].str.contains("mini-pretrained").all()
    assert ours["weights"].str.contains("mini-pretrained").all()
    assert ours["config_hash"].notna().all()
    assert set(final["status"]) >= {"this run", "checked", "unchecked"}  # published rows too


def test_figures_exist(results):
    folder, _ = results
    for name in FIGURES:
        path = folder / "figures" / f"{name}.png"
        assert path.is_file() and path.stat().st_size > 10_000, path


def test_maps_are_exported_for_the_official_mvtec_script(results):
    folder, _ = results
    tiffs = list((folder / "maps").glob("mvtec_tiffs_*/*/test/*/*.tiff"))
    assert tiffs, "no TIFF export of the MVTec-layout maps"


def test_rerun_from_a_later_notebook_reuses_finished_work(results):
    folder, _ = results
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CLIPSAM_RESULTS_DIR", str(folder.parent))
        runs = run_notebooks("smoke", only="04")
    assert [r.name for r in runs] == ["04_final_tables.ipynb"]
    first = json.loads((folder / "notebooks" / "run_log.json").read_text())
    assert first["notebooks"][0]["name"] == "04_final_tables.ipynb"
    assert runs[0].seconds < 120  # evaluates the maps it wrote; trains and decodes nothing


def test_the_your_images_notebook_wrote_every_output(results):
    folder, _ = results
    predictions = folder / "predictions"
    summaries = sorted(predictions.glob("*.json"))
    assert summaries, "notebook 05 wrote no prediction"
    for summary in summaries:
        data = json.loads(summary.read_text())
        stem = summary.with_suffix("")
        assert stem.with_suffix(".tiff").is_file() and stem.with_suffix(".npy").is_file()
        assert (predictions / f"{stem.name}_overlay.png").is_file()
        assert data["umci_source"].startswith("trained on")
        assert "mini-pretrained" in data["weights"]
