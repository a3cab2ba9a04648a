"""One workspace per run: datasets resolved once, backbones built once and shared, stages
that reuse what exists (an evaluation-only change recomputes no map), GPU-safe state."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from synthetic_defects import tiny_profile, training_interrupted_in_epoch

from clipsam_lib import ablations, data, train
from clipsam_lib.config import Direction
from clipsam_lib.modeling import BACKBONE_BUILDS, mmr
from clipsam_lib.modeling.umci import UMCI
from clipsam_lib.pipeline import map_key
from clipsam_lib.workspace import Lazy, Workspace

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(autouse=True)
def quiet_random_init():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*random.*")
        yield


def test_datasets_are_resolved_once_per_run(tmp_path, monkeypatch):
    ws = Workspace(tiny_profile(tmp_path))
    calls = []
    real = data.load_or_build_index
    monkeypatch.setattr(data, "load_or_build_index", lambda *a, **k: calls.append(a) or real(*a, **k))
    first = ws.dataset("src")
    assert ws.train_records("src") and ws.eval_records("src") and ws.dataset("src") is first
    assert ws.variant({"mmr.fusion": "B"}).dataset("src") is first  # variants share it
    assert len(calls) == 1
    assert first.root == tmp_path / "src" and len(first.index_hash) == 12


def test_backbones_are_lazy_and_shared_by_variants_with_the_same_identity(tmp_path):
    ws = Workspace(tiny_profile(tmp_path))
    before = dict(BACKBONE_BUILDS)
    lazy = ws.clip
    assert not lazy.built and BACKBONE_BUILDS == before  # nothing built until needed
    clip = lazy.get()
    assert ws.variant({"umci.hidden_dim": 64}).clip.get() is clip
    assert ws.variant({"clip.keep_underscore": True}).clip is not lazy  # other prompts
    assert ws.sam.get() is ws.variant({"mmr.threshold": 0.3}).sam.get()
    assert BACKBONE_BUILDS["clip"] - before.get("clip", 0) == 1
    assert BACKBONE_BUILDS["sam"] - before.get("sam", 0) == 1
    assert Lazy.of(clip).get() is clip


def test_training_with_mosaics_builds_clip_once(tmp_path):
    profile = tiny_profile(tmp_path, **{"train.mosaic_rate": 1.0})  # every step a mosaic
    ws = Workspace(profile)
    before = BACKBONE_BUILDS["clip"]
    data_set = train.prepare_training_set(ws, "src", progress=False)
    mosaics = len(data_set.keys) - len(ws.train_records("src"))
    assert mosaics == 2 * 24  # 2 epochs x 24 steps, each one a new 2x2 mosaic
    assert all(data_set.keys) and BACKBONE_BUILDS["clip"] - before == 1


def _count_calls(monkeypatch, owner, name: str) -> list[int]:
    calls: list[int] = []
    real = getattr(owner, name)

    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, counted)
    return calls


@pytest.mark.slow
def test_changing_only_eval_settings_reevaluates_without_decoder_or_umci(tmp_path, monkeypatch):
    profile = tiny_profile(tmp_path, **{"mmr.max_regions": 2, "train.epochs": {"mvtec": 1,
                                                                            "visa": 1}})
    ws = Workspace(profile)
    direction = Direction("src", ["dst"])
    first = ablations.run_variant(ws, {}, "default", direction)[0]
    assert sum(first.maps.regions(r) > 0 for r in first.records) > 0  # MMR really ran

    decoder = _count_calls(monkeypatch, mmr, "decode_masks")
    forwards = _count_calls(monkeypatch, UMCI, "forward")
    sam_builds = BACKBONE_BUILDS["sam"]
    for change in ({"eval.sigma": 4.0}, {"eval.protocol": "mvtec"},
                   {"eval.pro_variant": "mvtec"}, {"eval.image_score": "map_max"}):
        again = ablations.run_variant(ws, change, "eval only", direction)[0]
        assert again.maps.dir == first.maps.dir and again.maps.computed == 0
    assert not decoder and not forwards and BACKBONE_BUILDS["sam"] == sam_builds
    assert again.mean["image_score"] == "map_max"  # but the evaluation did change
    smoothed = ablations.run_variant(ws, {"eval.sigma": 4.0}, "x", direction)[0]
    assert smoothed.mean["pixel_auroc"] != first.mean["pixel_auroc"]
    # A change that does determine the maps gets new ones.
    fusion_b = ablations.run_variant(ws, {"mmr.fusion": "B"}, "fusion B", direction)[0]
    assert fusion_b.maps.dir != first.maps.dir and decoder


def test_map_key_names_only_what_determines_a_map(tmp_path):
    profile = tiny_profile(tmp_path)
    umci = train.init_umci(profile)
    key = map_key(profile, umci)
    for same in ({"eval.sigma": 2.0}, {"eval.protocol": "mvtec"}, {"results_dir": "x"},
                 {"description": "other"}, {"sweep_thresholds": [0.5]}, {"train.lr": 0.1}):
        assert map_key(profile.replace(**same), umci) == key, same
    for other in ({"mmr.fusion": "B"}, {"cache_dtype": "fp32"}, {"clip.keep_underscore": True},
                  {"sam.seed": 3}):
        assert map_key(profile.replace(**other), umci) != key, other
    assert map_key(profile, train.init_umci(profile.replace(**{"train.seed": 3}))) != key
    assert map_key(profile.replace(**{"mmr.enabled": False, "sam.seed": 3}),
                   umci) == map_key(profile.replace(**{"mmr.enabled": False}), umci)


def _repaint(path) -> None:
    """Other pixels at the same path (another draw of the benchmark, a rebuilt dataset)."""
    from PIL import Image

    picture = np.asarray(Image.open(path).convert("RGB"))
    Image.fromarray(255 - picture).save(path)


def test_the_same_paths_holding_other_pictures_get_their_own_umci_and_maps(tmp_path):
    """Runs and map folders are keyed by the files' bytes, not only their paths: keyed by
    paths, every other draw of the embedded benchmark loaded the committed draw's UMCI and
    read its maps back (found 2026-12-04)."""
    from clipsam_lib.pipeline import run_dataset

    ws = Workspace(tiny_profile(tmp_path, **{"train.epochs": {"mvtec": 1, "visa": 1}}))
    trained = train.train_umci(ws, "src", progress=False)
    records = ws.eval_records("dst")[:2]
    maps = run_dataset(ws, trained.checkpoint, "dst", records, progress=False)
    assert run_dataset(ws, trained.checkpoint, "dst", records, progress=False).computed == 0

    _repaint(tmp_path / "src" / ws.train_records("src")[0]["img_path"])
    again = Workspace(ws.profile)
    retrained = train.train_umci(again, "src", progress=False)
    assert retrained.run_dir != trained.run_dir and retrained.resumed_from == 0

    _repaint(tmp_path / "dst" / ws.eval_records("dst")[-1]["img_path"])  # not in `records`
    other = run_dataset(again, trained.checkpoint, "dst", records, progress=False)
    assert other.dir != maps.dir and other.computed == len(records)


def test_token_reader_keeps_fp16_in_budget_and_streams_the_rest(tmp_path):
    ws = Workspace(tiny_profile(tmp_path))
    data_set = train.prepare_training_set(ws, "src", progress=False)
    store = train.ClipFeatureStore(ws.profile)
    roomy = train._TokenReader(store, data_set.keys, budget_bytes=1 << 40)
    tight = train._TokenReader(store, data_set.keys, budget_bytes=0)
    items = [0, 5, 7]
    for a, b in zip(roomy.batch(items), tight.batch(items)):
        assert a.dtype == torch.float32 and torch.equal(a, b)
    assert {t.dtype for t in roomy.memory.values()} == {torch.float16} and not tight.memory
    read = tight.read_seconds
    tight.batch(items)
    assert tight.read_seconds > read  # streamed again
    timings = train.time_epochs(ws, "src", epochs=2, budget_bytes=0)
    assert len(timings) == 2 and all(0 < t["read_seconds"] < t["seconds"] for t in timings)


def test_checkpoints_hold_cpu_tensors_and_seeding_leaves_cuda_alone(tmp_path, monkeypatch):
    def refuse(*_args, **_kwargs):
        raise AssertionError("a CUDA generator was reseeded")

    monkeypatch.setattr(torch.cuda, "manual_seed_all", refuse)
    monkeypatch.setattr(torch.cuda, "manual_seed", refuse)
    profile = tiny_profile(tmp_path, **{"train.epochs": {"mvtec": 2, "visa": 2}})
    with training_interrupted_in_epoch(1):  # keeps its resume state (last.pt, with Adam's)
        train.train_umci(Workspace(profile), "src", progress=False)
    folder = train.run_dir(profile, "src")
    states = {name: torch.load(folder / name, weights_only=True)  # no map_location
              for name in ("last.pt", "epoch_001.pt")}
    result = train.train_umci(Workspace(profile), "src", progress=False)
    states["final.pt"] = torch.load(result.checkpoint, weights_only=True)
    assert "optimizer" in states["last.pt"]
    for state in states.values():
        tensors = [t for t in state["umci"].values()]
        if "optimizer" in state:
            tensors += [v for s in state["optimizer"]["state"].values() for v in s.values()
                        if isinstance(v, torch.Tensor)]
        assert tensors and all(t.device.type == "cpu" for t in tensors)
    assert np.isfinite(result.losses["loss"].astype(float)).all()


def test_a_stored_plan_whose_tokens_left_the_cache_is_made_again(tmp_path):
    profile = tiny_profile(tmp_path, **{"train.mosaic_rate": 0.5})
    ws = Workspace(profile)
    first = train.prepare_training_set(ws, "src", progress=False)
    store = train.ClipFeatureStore(profile)
    mosaic = first.keys[-1]  # the last item of the plan is a mosaic
    store.cache.path(store.tokens_key(mosaic)).unlink()
    again = train.prepare_training_set(ws, "src", progress=False)
    assert all(store.has_image(k) for k in again.keys) and again.epochs == first.epochs
    assert train.time_epochs(ws, "src", epochs=1)  # trains from it without a KeyError
