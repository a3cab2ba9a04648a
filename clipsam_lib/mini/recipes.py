"""The recipes of the mini backbones, as data, and the hash that names them.

A recipe is everything that decides the weights: architecture, corpus, optimiser,
schedule, seed, thread count. Its hash (``recipe_hash``) is written into the
safetensors file's metadata, shown in every results row (``mini-pretrained:<hash>``),
and checked by a test against the committed files, so a change of recipe without
re-running ``clipsam pretrain-mini`` cannot go unnoticed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clipsam_lib.config import CONFIG_DIR
from clipsam_lib.mini.corpus import CORPUS_VERSION

# Bump when the training code changes what a recipe produces (the hash covers it).
TRAINER_VERSION = 2

WEIGHTS_FOLDER = Path(__file__).resolve().parent.parent / "mini_weights"
CLIP_FILE = "clipsam-mini-clip.safetensors"
SAM_FILE = "clipsam-mini-sam.safetensors"
CLIP_MODEL_NAME = "clipsam-mini-vit"  # configs/clipsam-mini-vit.json (open_clip config)

# segment-anything's classes at a small size (sam_backbone.build_sam_mini builds it).
# Measured 2026-12-05, not adopted (docs/miniature.md): a finer grid (320 px, 10 px patches,
# 96-d encoder) and a wider decoder (192-d) fit thin scratches no better (0.200 / 0.227 on
# the training pictures, 0.226 here); the wider one nears 0.6 on synth_mvtec (0.583 over
# 8 draws) but costs 16.5 min and most of MMR's gain over the rough map.
SAM_ARCHITECTURE: dict[str, Any] = {
    "image_size": 384,  # 24 x 24 embedding, 96 x 96 low-res masks
    "patch_size": 16,
    "encoder_embed_dim": 128,
    "encoder_depth": 4,
    "encoder_num_heads": 4,
    "encoder_global_attn_indexes": [3],
    "window_size": 8,
    "prompt_embed_dim": 128,
    "decoder_mlp_dim": 512,
    "decoder_num_heads": 4,
}


@dataclass(frozen=True)
class ClipRecipe:
    """Contrastive image-text pretraining with open_clip's model and ``ClipLoss``."""

    seed: int = 0
    threads: int = 2  # CPU float sums depend on it: part of what makes the bits
    # 16,000 pictures, adopted 2026-12-05 (the same 960 steps, so each is seen 2.4 times
    # instead of 13 with 3,000): over 8 draws the baseline's pixel AUROC 79.7 / 76.6
    # instead of 71.2 / 72.5, +UMCI's 82.6 / 84.1, MMR above the rough map's F1-max and AP
    # on 8 of 8 draws in both directions (docs/miniature.md).
    corpus_size: int = 16000
    defect_rate: float = 0.5
    word_rate: float = 0.3  # captions whose class word is made up
    region_loss: bool = True  # ClipLoss on defect / defect-free regions too (clip_pretrain)
    # Each patch against its picture's two state captions (clip_pretrain.patch_state_loss):
    # the APRIL-GAN baseline's pixel AUROC 76.5 / 86.6 with it, 64.0 / 75.6 without (600
    # steps of 64; docs/miniature.md).
    patch_loss: bool = True
    # Steps of 40 pictures (more, smaller steps than 600 of 64 helped: docs/miniature.md).
    # 750 since 2026-12-05, chosen by the time arithmetic for the 30 min on 2
    # cores, before its figures were read: 960 steps took 19.0 min on a 2-core AMD EPYC
    # (32.3 with the SAM), 750 take 14.4 (27.7). Measured with 750: the baseline 81.3 /
    # 85.3 pixel AUROC on the committed draw (960: 80.8 / 83.3), 79.3 / 73.7 over 8 draws
    # (79.7 / 76.6); MMR above the rough map's F1-max on 8 and 8 of 8 draws (both).
    steps: int = 750
    batch_size: int = 40
    lr: float = 5e-4
    weight_decay: float = 0.1
    warmup_steps: int = 40
    checkpoint_every: int = 50


@dataclass(frozen=True)
class SamRecipe:
    """Promptable segmentation with SAM's loss (20 focal + 1 dice on masks, MSE on IoU)."""

    seed: int = 0
    threads: int = 2
    # 6,000 (same steps) measured 2026-12-05, not adopted: held-out median IoU 0.624 (0.589
    # here), benchmark 0.536 / 0.547 over 8 draws (0.545 / 0.570), MMR's F1-max gain over
    # the rough map +1.7 / +1.3 points (+4.1 / +5.2; docs/miniature.md).
    corpus_size: int = 1600
    defect_rate: float = 0.7
    # Measured 2026-12-04, not adopted: longer training follows a region's own box better
    # (top-mask median IoU on held-out corpus pictures, bench/mini_sam_heldout.py: 0.589
    # here, 0.656 with 1,500 steps, 0.700 with 2,000 steps of 6 all-defective pictures;
    # benchmark 0.499 / 0.554 -> 0.543 / 0.628 -> 0.599 / 0.657), but MMR's masks, from the
    # same imprecise prompts, then catch fewer defect pixels (15.9% / 17.2% of them here,
    # 12.6% / 6.9% and 8.9% / 7.3% with those) and MMR's F1-max gain over the rough map
    # shrinks or reverses (+2.8 / +9.0 points here; +0.2 / +0.8 and -2.0 / +3.2; CLIP
    # 95d6bb550798, committed draw; docs/miniature.md).
    steps: int = 1000
    images_per_step: int = 8
    prompts_per_image: int = 4
    box_jitter: float = 0.1  # box sides moved by N(0, 0.1 x side), as SAM's training
    # A prompt with a box is unambiguous: SAM trains one output for it. MMR asks for all
    # three (multimask_output=True, as the paper), so all three are trained to the region
    # (sam_pretrain.trained_mask_loss; off, only the best of the three, as for a lone point).
    box_trains_all_masks: bool = True
    # The share of box prompts drawn loose (the guess, before it was measured, that a
    # rough map's blob is larger than its defect; on the embedded benchmark MMR's boxes
    # are smaller, see part_box_rate): each side pushed out by up to
    # ``loose_box_growth`` x the region's side, the target still the region alone.
    # Measured 2026-12-04, not adopted: 0.5 with every picture defective follows loose
    # held-out boxes better (median IoU 0.539 against 0.505), but MMR beat the rough map's
    # F1-max on 7 / 7 of 8 draws and its AP on 8 / 4 (off, as committed: 8 / 8 and 8 / 8).
    loose_box_rate: float = 0.0
    loose_box_growth: float = 0.75
    # The share of box prompts drawn as MMR's really are on the embedded benchmark: a box
    # around a part of the region (sides ``part_box_scale`` x the region's, around its
    # point), the target the whole region. MMR's boxes there are a quarter of their
    # defect's side (median 9 px against 36-40 px; bench/mmr_gain_by_pointing.py).
    # Measured 2026-12-04: 0.5 doubles the defect pixels SAM's masks cover from MMR's
    # prompts (64 % / 63 % against 34 % / 33 %) and MMR's mean F1-max gain over 8 draws
    # (+5.1 / +8.4 points against +4.1 / +5.2), but the median IoU from a defect's own box
    # falls to 0.368 / 0.384. Not adopted (2026-12-05): the part sizes come from the test
    # sets' masks, and real SAM reads a box as the object's extent (docs/miniature.md).
    part_box_rate: float = 0.0
    part_box_scale: tuple[float, float] = (0.1, 0.5)
    lr: float = 8e-4
    weight_decay: float = 0.1
    warmup_steps: int = 50
    focal_weight: float = 20.0
    # 5 measured 2026-12-05, not adopted: scratches fitted no better (0.219 on training
    # pictures), the box median 0.557 / 0.621 over 8 draws (0.545 / 0.570 here), MMR's
    # F1-max gain over the rough map +0.5 / +3.7 points (+2.8 / +6.9; docs/miniature.md).
    dice_weight: float = 1.0
    iou_weight: float = 1.0
    checkpoint_every: int = 100


def _clip_model_json() -> dict[str, Any]:
    return json.loads((CONFIG_DIR / f"{CLIP_MODEL_NAME}.json").read_text())


# Fields added after weights were committed, with their "off" value: off, they are left
# out of the hash, so the recipe that made those weights keeps its hash (off is what the
# code did before them).
LATER_FIELDS: dict[str, Any] = {"patch_loss": False, "box_trains_all_masks": False,
                                "loose_box_rate": 0.0, "part_box_rate": 0.0}
# A field that only means something when another is on: left out while that one is off.
DEPENDENT_FIELDS = {"loose_box_growth": "loose_box_rate", "part_box_scale": "part_box_rate"}


def recipe_blob(recipe: ClipRecipe | SamRecipe) -> dict[str, Any]:
    """What the hash covers: the recipe, the corpus version and the architecture."""
    kind = "clip" if isinstance(recipe, ClipRecipe) else "sam"
    architecture = _clip_model_json() if kind == "clip" else SAM_ARCHITECTURE
    fields = dataclasses.asdict(recipe)
    off = {name for name, value in fields.items()
           if name in LATER_FIELDS and value == LATER_FIELDS[name]}
    off |= {name for name, parent in DEPENDENT_FIELDS.items() if parent in off}
    fields = {name: value for name, value in fields.items() if name not in off}
    return {"kind": kind, "recipe": fields, "trainer": TRAINER_VERSION,
            "corpus_version": CORPUS_VERSION, "architecture": architecture}


def recipe_hash(recipe: ClipRecipe | SamRecipe) -> str:
    blob = json.dumps(recipe_blob(recipe), sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


RECIPES: dict[str, ClipRecipe | SamRecipe] = {"clip": ClipRecipe(), "sam": SamRecipe()}
FILES = {"clip": CLIP_FILE, "sam": SAM_FILE}
