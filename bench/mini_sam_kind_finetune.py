"""Can the mini SAM fit a region kind at all? Fine-tune the committed SAM on one kind.

A diagnostic, not a recipe: the committed SAM fits thin scratches poorly even on its own
training pictures (``bench/mini_sam_heldout.py --training 300``: 0.226, against 0.58-0.75
for the other kinds). Is that how rarely it sees them (15 % of its prompts) or what the
architecture can draw (2-4 px lines from a 24 x 24 embedding, whose 4 x 4 block of
low-res mask pixels under each token is decoded from that token alone)? This fine-tunes
the committed weights for ``--steps`` steps of SAM's loss (``sam_pretrain.prompt_loss``,
the recipe's weights and box jitter) on box prompts over the regions of ``--kind`` only
(``all``: every kind, the control), on corpus pictures 300-1299, and prints per kind the
median ground-truth-box IoU and the top mask's area over its region's on corpus pictures
0-299 and on the held-out pictures, before and after, in one run.

    .venv/bin/python bench/mini_sam_kind_finetune.py [--kind scratch|all|...] [--steps N]

Measured 2026-12-05 (AMD EPYC, 2 cores, steps of 8 pictures x 4 prompts, lr 2e-4; median
IoU on training / held-out pictures, before: scratches 0.226 / 0.261, shapes 0.730):

- ``--kind scratch`` (150 steps, 2.7 min): scratches 0.323 / 0.312, shapes 0.215;
- ``--kind scratch --steps 600`` (9.7 min, beside other work): scratches 0.418 / 0.422, shapes 0.120;
- ``--kind all`` (150 steps, the control): scratches 0.200 / 0.226, shapes 0.719.

So more scratch prompts alone do not fit them: four times the recipe's, and nothing else,
reach 0.42 (docs/miniature.md, "Where the committed SAM misses 0.6").
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd
import torch
from mini_sam_heldout import by_kind, heldout_rows, training_rows

from clipsam_lib.config import load_profile
from clipsam_lib.mini import corpus
from clipsam_lib.mini.recipes import SAM_FILE, WEIGHTS_FOLDER, SamRecipe
from clipsam_lib.mini.sam_pretrain import jittered_box, padded_target, prompt_loss, resized_item
from clipsam_lib.modeling.sam_backbone import SamBackbone, build_sam_mini

FINETUNE_PICTURES = range(300, 1300)  # after the 300 that are evaluated
PICTURES_PER_STEP, PROMPTS_PER_PICTURE = 8, 4


def kind_corpus(kind: str, image_size: int) -> list[tuple[np.ndarray, list[np.ndarray]]]:
    """(picture, its regions of ``kind``) for the fine-tuning pictures that have one."""
    recipe = SamRecipe()
    pictures = []
    for index in FINETUNE_PICTURES:
        item = corpus.make_item(recipe.seed, "sam", index, shapes=True,
                                defect_rate=recipe.defect_rate)
        image, masks, kinds = resized_item(item, image_size)
        masks = [m for m, k in zip(masks, kinds) if kind == "all" or k == kind]
        if masks:
            pictures.append((image, masks))
    return pictures


def finetune(sam, pictures, steps: int, lr: float) -> None:
    recipe, size = SamRecipe(), sam.image_encoder.img_size
    sam.requires_grad_(True).train()  # build_sam_mini loads float32 parameters
    optimizer = torch.optim.AdamW(sam.parameters(), lr=lr, weight_decay=recipe.weight_decay)
    for step in range(steps):
        rng = np.random.default_rng([recipe.seed, 23, step])
        chosen = rng.choice(len(pictures), PICTURES_PER_STEP, replace=False)
        embeddings = sam.image_encoder(torch.stack([
            sam.preprocess(torch.from_numpy(pictures[i][0]).permute(2, 0, 1).float())
            for i in chosen]))
        total = 0.0
        for b, i in enumerate(chosen):
            regions = pictures[i][1]
            picks = rng.choice(len(regions), PROMPTS_PER_PICTURE,
                               replace=len(regions) < PROMPTS_PER_PICTURE)
            masks = [regions[k] for k in picks]
            boxes = torch.tensor(np.stack([jittered_box(m, recipe.box_jitter, rng)
                                           for m in masks]))
            targets = torch.stack([padded_target(m, size) for m in masks])
            loss, _ = prompt_loss(sam, embeddings[b:b + 1], None, boxes, targets, recipe)
            total = total + loss / len(chosen)
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()
    sam.eval().requires_grad_(False)


def kind_table(backbone: SamBackbone, when: str) -> pd.DataFrame:
    with torch.no_grad():
        table = pd.DataFrame(training_rows(backbone, 300) + heldout_rows(backbone))
    return by_kind(table).add_prefix(f"{when} ")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kind", default="scratch", help="a defect type, shape, or all")
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--lr", type=float, default=2e-4)
    args = parser.parse_args()
    started = time.perf_counter()
    sam = build_sam_mini(str(WEIGHTS_FOLDER / SAM_FILE))
    backbone = SamBackbone(load_profile("smoke").sam, "cpu", model=sam)
    before = kind_table(backbone, "before")
    pictures = kind_corpus(args.kind, sam.image_encoder.img_size)
    print(f"fine-tuning on {args.kind}: {len(pictures)} pictures, {args.steps} steps")
    finetune(sam, pictures, args.steps, args.lr)
    after = kind_table(backbone, "after")
    print(pd.concat([before, after], axis=1).to_string())
    print(f"{time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
