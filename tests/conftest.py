"""Data fixtures: dataset trees in the exact real layouts (datasets.md), with tiny images.

File names, extensions, folder structure and mask conventions are the real ones; the
pictures are 8 x 8 px so that the full per-class counts (about 27,000 files) stay fast.
"""

from __future__ import annotations

import io
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

# MVTec AD: class -> (train, test total, test good, defect types) (datasets.md; the train
# counts per class sum to the documented 3,629).
MVTEC = {
    "bottle": (209, 83, 20, ["broken_large", "broken_small", "contamination"]),
    "cable": (224, 150, 58, ["bent_wire", "cable_swap", "combined", "cut_inner_insulation",
                             "cut_outer_insulation", "missing_cable", "missing_wire",
                             "poke_insulation"]),
    "capsule": (219, 132, 23, ["crack", "faulty_imprint", "poke", "scratch", "squeeze"]),
    "carpet": (280, 117, 28, ["color", "cut", "hole", "metal_contamination", "thread"]),
    "grid": (264, 78, 21, ["bent", "broken", "glue", "metal_contamination", "thread"]),
    "hazelnut": (391, 110, 40, ["crack", "cut", "hole", "print"]),
    "leather": (245, 124, 32, ["color", "cut", "fold", "glue", "poke"]),
    "metal_nut": (220, 115, 22, ["bent", "color", "flip", "scratch"]),
    "pill": (267, 167, 26, ["color", "combined", "contamination", "crack", "faulty_imprint",
                            "pill_type", "scratch"]),
    "screw": (320, 160, 41, ["manipulated_front", "scratch_head", "scratch_neck",
                             "thread_side", "thread_top"]),
    "tile": (230, 117, 33, ["crack", "glue_strip", "gray_stroke", "oil", "rough"]),
    "toothbrush": (60, 42, 12, ["defective"]),
    "transistor": (213, 100, 60, ["bent_lead", "cut_lead", "damaged_case", "misplaced"]),
    "wood": (247, 79, 19, ["color", "combined", "hole", "liquid", "scratch"]),
    "zipper": (240, 151, 32, ["broken_teeth", "combined", "fabric_border", "fabric_interior",
                              "rough", "split_teeth", "squeezed_teeth"]),
}
MVTEC_SINGLE_CHANNEL = {"grid", "screw", "zipper"}

# VisA 1cls split: class -> (train normal, test normal, test anomalous); train sums to 8,659.
VISA = {
    "candle": (900, 100, 100), "capsules": (542, 60, 100), "cashew": (450, 50, 100),
    "chewinggum": (453, 50, 100), "fryum": (450, 50, 100), "macaroni1": (900, 100, 100),
    "macaroni2": (900, 100, 100), "pcb1": (904, 100, 100), "pcb2": (901, 100, 100),
    "pcb3": (905, 101, 100), "pcb4": (904, 101, 100), "pipe_fryum": (450, 50, 100),
}

# MTD: folder -> images (the defective ones have a non-empty mask, MT_Free an empty one).
MTD = {"Blowhole": 115, "Break": 85, "Crack": 57, "Fray": 32, "Uneven": 103, "Free": 952}

# KSDD2: folder -> (images, defective).
KSDD2 = {"train": (2331, 246), "test": (1004, 110)}

SIDE = 8


def encode(array: np.ndarray, fmt: str = "PNG", palette: bool = False) -> bytes:
    """Bytes of an image file holding ``array`` (palette=True: a P-mode index map)."""
    if palette:
        image = Image.frombytes("P", (array.shape[1], array.shape[0]), array.tobytes())
        image.putpalette([v for k in range(256) for v in (k, 0, 0)])  # looks black
    else:
        image = Image.fromarray(array)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def _pictures(side: int = SIDE) -> SimpleNamespace:
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
    gray = rgb[:, :, 0].copy()
    binary = np.zeros((side, side), np.uint8)
    binary[2:5, 3:6] = 255
    anti_aliased = np.zeros((side, side), np.uint8)
    anti_aliased[2:5, 3:6] = 255
    anti_aliased[5, 3:6] = 37  # the soft edge of MTD masks
    index_map = (binary > 0).astype(np.uint8) * 2  # VisA: defect type 2
    return SimpleNamespace(
        rgb_png=encode(rgb), gray_png=encode(gray), rgb_jpg=encode(rgb, "JPEG"),
        gray_jpg=encode(gray, "JPEG"), mask_png=encode(binary),
        empty_png=encode(np.zeros((side, side), np.uint8)),
        soft_mask_png=encode(anti_aliased), index_png=encode(index_map),
        palette_png=encode(index_map, palette=True),
    )


PICTURES = _pictures()


def put(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def split_evenly(total: int, parts: int) -> list[int]:
    return [total // parts + (i < total % parts) for i in range(parts)]


def write_mvtec_tree(root: Path, classes: dict = MVTEC) -> Path:
    for cls, (train, test_total, test_good, defects) in classes.items():
        image = PICTURES.gray_png if cls in MVTEC_SINGLE_CHANNEL else PICTURES.rgb_png
        for i in range(train):
            put(root / cls / "train" / "good" / f"{i:03d}.png", image)
        for i in range(test_good):
            put(root / cls / "test" / "good" / f"{i:03d}.png", image)
        for defect, count in zip(defects, split_evenly(test_total - test_good, len(defects)),
                                 strict=True):
            for i in range(count):
                put(root / cls / "test" / defect / f"{i:03d}.png", image)
                put(root / cls / "ground_truth" / defect / f"{i:03d}_mask.png", PICTURES.mask_png)
    (root / "license.txt").write_text("CC BY-NC-SA 4.0\n")
    return root


def write_visa_tree(root: Path, classes: dict = VISA, palette_class: str | None = "pcb1") -> Path:
    rows = ["object,split,label,image,mask"]
    for cls, (train, test_normal, test_anomalous) in classes.items():
        for i in range(train + test_normal):
            image = f"{cls}/Data/Images/Normal/{i:04d}.JPG"
            put(root / image, PICTURES.rgb_jpg)
            rows.append(f"{cls},{'train' if i < train else 'test'},normal,{image},")
        mask_bytes = PICTURES.palette_png if cls == palette_class else PICTURES.index_png
        for i in range(test_anomalous):
            image = f"{cls}/Data/Images/Anomaly/{i:03d}.JPG"
            mask = f"{cls}/Data/Masks/Anomaly/{i:03d}.png"
            put(root / image, PICTURES.rgb_jpg)
            put(root / mask, mask_bytes)
            rows.append(f"{cls},test,anomaly,{image},{mask}")
    put(root / "split_csv" / "1cls.csv", ("\n".join(rows) + "\n").encode())
    return root


def write_mtd_tree(root: Path, counts: dict = MTD) -> Path:
    number = 0
    for defect, count in counts.items():
        mask = PICTURES.empty_png if defect == "Free" else PICTURES.soft_mask_png
        for _ in range(count):
            number += 1
            stem = f"exp{number % 6}_num_{number}"
            put(root / f"MT_{defect}" / "Imgs" / f"{stem}.jpg", PICTURES.gray_jpg)
            put(root / f"MT_{defect}" / "Imgs" / f"{stem}.png", mask)
    (root / "README.md").write_text("Magnetic tile defects\n")
    return root


def write_ksdd2_tree(root: Path, counts: dict = KSDD2) -> Path:
    for folder, (total, defective) in counts.items():
        first = 10000 if folder == "train" else 20000
        for i in range(total):
            stem = f"{first + i:05d}"
            put(root / folder / f"{stem}.png", PICTURES.rgb_png)
            put(root / folder / f"{stem}_GT.png",
                PICTURES.mask_png if i < defective else PICTURES.empty_png)
    return root


@pytest.fixture(scope="session")
def data_trees() -> SimpleNamespace:
    """The tree writers and count tables, for tests that need their own (small) trees."""
    return SimpleNamespace(
        mvtec=write_mvtec_tree, visa=write_visa_tree, mtd=write_mtd_tree,
        ksdd2=write_ksdd2_tree, put=put, pictures=PICTURES, encode=encode,
        MVTEC=MVTEC, VISA=VISA, MTD=MTD, KSDD2=KSDD2,
    )


@pytest.fixture(scope="session")
def mvtec_tree(tmp_path_factory) -> Path:
    return write_mvtec_tree(tmp_path_factory.mktemp("mvtec") / "mvtec_anomaly_detection")


@pytest.fixture(scope="session")
def visa_tree(tmp_path_factory) -> Path:
    return write_visa_tree(tmp_path_factory.mktemp("visa") / "VisA_20220922")


@pytest.fixture(scope="session")
def mtd_tree(tmp_path_factory) -> Path:
    return write_mtd_tree(tmp_path_factory.mktemp("mtd") / "Magnetic-tile-defect-datasets.")


@pytest.fixture(scope="session")
def ksdd2_tree(tmp_path_factory) -> Path:
    return write_ksdd2_tree(tmp_path_factory.mktemp("ksdd2") / "KolektorSDD2")


@pytest.fixture(scope="module")
def one_torch_thread():
    """Two cores shared by several jobs: one intra-op thread avoids OpenMP spin stalls."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def smoke_results_dir(tmp_path_factory) -> Path:
    """One results folder for the tests that train the smoke profile's UMCIs.

    UMCI checkpoints live under the results folder (``train.run_dir``), keyed by what
    determines them; the miniature's tests and the notebook run train the same ones, so
    sharing the folder trains each once (as ``make reproduce`` after a test run would).
    """
    return tmp_path_factory.mktemp("smoke-results")
