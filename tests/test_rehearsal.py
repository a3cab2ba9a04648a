"""The rehearsal profile end to end at the paper's architecture sizes, on a handful of
images: ViT-L-14-336 at 518 px and SAM ViT-H (random init), every stage of notebooks
01 and 04 plus an evaluation-only re-run, each backbone built once in the process."""

from __future__ import annotations

import warnings

import pytest

from clipsam_lib.config import load_profile
from clipsam_lib.data.synthetic import build_embedded_benchmark
from clipsam_lib.modeling import BACKBONE_BUILDS, mmr
from clipsam_lib.rehearsal import rehearse
from clipsam_lib.workspace import Workspace

pytestmark = pytest.mark.slow


def test_rehearsal_at_real_sizes_builds_each_backbone_once_and_reuses_maps(
    tmp_path, monkeypatch
):
    profile = load_profile(
        "rehearsal",
        data_dir=str(tmp_path / "data"), cache_dir=str(tmp_path / "cache"),
        results_dir=str(tmp_path / "results"),
        datasets=[
            {"name": "synth_mvtec", "layout": "mvtec", "root": "synth_mvtec",
             "synthetic": True, "classes": ["brick"]},
            {"name": "synth_visa", "layout": "visa", "root": "synth_visa",
             "synthetic": True, "classes": ["gravel"]},
        ],
        directions=[{"train": "synth_mvtec", "test": ["synth_visa"]}],
        **{"train.max_images_per_class": 2, "eval.max_images_per_class": 1},
    )
    build_embedded_benchmark(profile)
    ws = Workspace(profile)
    rec = ws.eval_records("synth_visa")[0]
    assert rec["width"] > 1000  # VisA-like sides at the paper's size
    assert max(r["width"] for r in ws.train_records("synth_mvtec")) >= 700
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*random.*")
        before = dict(BACKBONE_BUILDS)
        cost = rehearse(ws, parts=("extract", "fit", "final"))
        decoder_calls = []
        monkeypatch.setattr(mmr, "decode_masks",
                            lambda *a, **k: decoder_calls.append(1) or pytest.fail("decoded"))
        again = rehearse(ws, parts=("eval_only",))
    assert BACKBONE_BUILDS["clip"] - before.get("clip", 0) == 1
    assert BACKBONE_BUILDS["sam"] - before.get("sam", 0) == 1
    by_stage = cost.set_index("stage")
    assert by_stage.filter(like="extract: CLIP", axis=0)["clip_builds"].item() == 1
    assert by_stage.filter(like="extract: SAM", axis=0)["sam_builds"].item() == 1
    later = cost[~cost["stage"].str.startswith("extract")]
    assert (later[["clip_builds", "sam_builds"]] == 0).all().all()  # shared, not rebuilt
    assert (cost["seconds"] > 0).all() and (cost["paper_seconds_estimate"] > 0).all()
    assert (cost["peak_rss_bytes"] > 2**30).all()  # ViT-H alone is 2.5 GB in fp32
    on_gpu = ws.device.type == "cuda"  # device: auto takes a GPU where there is one
    assert ((cost["peak_gpu_bytes"] > 0) if on_gpu else (cost["peak_gpu_bytes"] == 0)).all()
    assert again["clip_builds"].item() == 0 and again["sam_builds"].item() == 0
    assert not decoder_calls
    assert by_stage.filter(like="extract: SAM", axis=0)["paper_images"].item() == 2162
