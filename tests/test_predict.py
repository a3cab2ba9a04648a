"""clipsam predict on a user's images: every output at the original size, clear errors."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import tifffile
from PIL import Image
from synthetic_defects import tiny_profile

from clipsam_lib import cli, train
from clipsam_lib.data.io import DatasetError
from clipsam_lib.errors import DiskError, UserError
from clipsam_lib.predict import collect_images, default_umci, predict_images
from clipsam_lib.workspace import Workspace

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("predict")
    profile = tiny_profile(tmp, **{"train.epochs": {"mvtec": 1, "visa": 1},
                                   "mmr.max_regions": 2, "mmr.threshold_mode": "relative"})
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*random.*")
        result = train.train_umci(Workspace(profile), "src", progress=False)
    return profile, result.checkpoint


def _user_images(folder):
    rng = np.random.default_rng(4)
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 255, (70, 130, 3), np.uint8)).save(folder / "wide.png")
    Image.fromarray(rng.integers(0, 255, (120, 50), np.uint8)).save(folder / "gray.jpg")
    Image.fromarray(rng.integers(0, 255, (64, 64, 4), np.uint8), "RGBA").save(folder / "alpha.png")
    tifffile.imwrite(folder / "scan.tif", rng.integers(0, 255, (40, 90, 3), np.uint8))
    Image.fromarray(rng.integers(0, 255, (33, 47, 3), np.uint8)).save(folder / "old.bmp")
    return {"wide": (70, 130), "gray": (120, 50), "alpha": (64, 64), "scan": (40, 90),
            "old": (33, 47)}


def test_every_output_is_written_at_the_original_size(trained, tmp_path):
    profile, checkpoint = trained
    sizes = _user_images(tmp_path / "mine")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*random.*")
        run = predict_images(profile, [tmp_path / "mine"], "widget", tmp_path / "out",
                             umci=checkpoint, progress=False)
    assert sorted(f.image.stem for f in run.written) == sorted(sizes) and not run.skipped
    for item in run.written:
        expected = sizes[item.image.stem]
        assert tifffile.imread(item.map_tiff).shape == expected
        final = np.load(item.map_npy)
        assert final.dtype == np.float32 and final.shape == expected
        assert 0.0 <= final.min() and final.max() <= 1.0
        assert Image.open(item.overlay).size[0] > 500
        summary = json.loads(item.summary.read_text())
        assert summary["size"] == list(expected) and summary["class_name"] == "widget"
        assert summary["image_score_kind"] == "clip_global"
        assert 0.0 <= summary["image_score"] <= 1.0 and "random-init" in summary["weights"]
        assert len(summary["prompts"]["boxes"]) == len(summary["sam_scores"])
        assert summary["heat_map_scale"] == "fixed [0, 1]"


def test_bad_images_are_named_and_skipped_only_when_asked(trained, tmp_path):
    profile, checkpoint = trained
    _user_images(tmp_path / "mine")
    (tmp_path / "mine" / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(DatasetError) as err:
        predict_images(profile, [tmp_path / "mine"], "widget", tmp_path / "out",
                       umci=checkpoint, progress=False)
    message = err.value.args[0]
    assert "broken.png" in message and "--skip-bad" in message and "\n" not in message
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").glob("*.tiff"))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*random.*")
        run = predict_images(profile, [tmp_path / "mine" / "wide.png",
                                       tmp_path / "mine" / "broken.png"], "widget",
                             tmp_path / "out", umci=checkpoint, skip_bad=True, progress=False)
    assert len(run.written) == 1 and len(run.skipped) == 1 and "broken.png" in run.skipped[0]


def test_input_errors_are_one_line(trained, tmp_path):
    profile, checkpoint = trained
    _user_images(tmp_path / "mine")
    with pytest.raises(UserError, match="class name is empty"):
        predict_images(profile, [tmp_path / "mine"], "  ", tmp_path / "out", umci=checkpoint)
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(DiskError, match=r"a_file/sub \(the output folder\) is not writable"):
        predict_images(profile, [tmp_path / "mine"], "widget", blocker / "sub", umci=checkpoint)
    with pytest.raises(UserError, match="nowhere does not exist"):
        collect_images([tmp_path / "nowhere"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="holds no image"):
        collect_images([tmp_path / "empty"])
    untrained = profile.replace(results_dir=str(tmp_path / "fresh"),
                                directions=[{"train": "src", "test": ["dst"]}])
    with pytest.raises(UserError, match=r"clipsam run --profile smoke --only 01"):
        default_umci(untrained)


def test_cli_predict_uses_the_profiles_trained_umci(trained, tmp_path, monkeypatch, capsys):
    profile, _checkpoint = trained
    _user_images(tmp_path / "mine")
    monkeypatch.setattr("clipsam_lib.config.load_profile", lambda name: profile.replace(
        directions=[{"train": "src", "test": ["dst"]}]))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*random.*")
        code = cli.main(["predict", str(tmp_path / "mine" / "wide.png"), "--class", "bottle",
                         "--out", str(tmp_path / "cli_out")])
    out = capsys.readouterr().out
    assert code == 0 and "trained on src" in out and "1 image(s) written" in out
    assert (tmp_path / "cli_out" / "wide_overlay.png").is_file()
