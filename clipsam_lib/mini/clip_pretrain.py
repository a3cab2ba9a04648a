"""Mini CLIP: open_clip's own model and contrastive loss on the mini corpus.

The model is ``clipsam-mini-vit`` (``configs/clipsam-mini-vit.json``) built by
``open_clip.create_model``; the loss is ``open_clip.loss.ClipLoss``, applied twice:

- to the images and their captions, as CLIP is trained;
- to *regions* and theirs: the mean patch token (projected like the pooled one) inside
  a picture's defects is captioned "damaged ...", the mean outside them "flawless ...";
- and, with ``patch_loss`` (on in the committed recipe), to each *patch* and its
  picture's two state captions: the softmax of (patch . "flawless ...", patch .
  "damaged ...") at the model's temperature, cross-entropy against whether the patch is
  a defect patch, the defect and the clean patches weighted alike. This is the
  comparison a zero-shot anomaly map makes at run time, taught on the corpus's own masks.

Each is captioned afresh every step from the project's templates and states ("a photo
of a damaged clock.", "a flawless zorvek."). The region term is what a web-scale CLIP
gets from billions of captions of local things and a miniature cannot: without it, a
CLIP trained here on image captions alone told damaged from flawless with its class
token only, and linear probes on its patch tokens stayed at chance on the benchmark
(pixel AUROC 44-55 in the two directions). With the region term alone (recipe
8162681dabbd, the one committed before), the APRIL-GAN baseline reached pixel AUROC
64.0 / 75.6 and +UMCI 70.3 / 69.7: the patch tokens said little about *where* a defect
is, which is what the patch term teaches. With it (600 steps of 64) the baseline reached
76.5 / 86.6 and +UMCI 80.4 / 83.8; the same compute as 960 steps of 40 gave 74.2 /
82.1 and 82.7 / 87.9, 16,000 corpus pictures instead of 3,000 80.8 / 83.3 and 83.5 /
91.8, and the committed recipe runs 750 of those steps instead of 960 (for the issue's 30
min on 2 cores): 81.3 / 85.3 and 82.8 / 90.3 (docs/miniature.md). The patch term
was kept off while the mini SAM's best-of-three training made MMR lower those sharper
rough maps' F1-max on synth_mvtec (13.9 -> 13.1); the SAM recipe that trains all three
masks for box prompts (``SamRecipe.box_trains_all_masks``) raises it, so both are on.
Pictures are preprocessed exactly as
``ClipBackbone.preprocess`` does at run time.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm.auto import tqdm

from clipsam_lib.mini import corpus
from clipsam_lib.mini.loop import param_groups, pinned_threads, run_steps, save_weights
from clipsam_lib.mini.recipes import CLIP_MODEL_NAME, ClipRecipe
from clipsam_lib.modeling import clip_backbone  # registers the package's model configs

IMAGE_SIZE = 224
PATCH = 14
DEFECT_SHARE = 0.15  # a patch whose area is at least this much defect is a defect patch


def defect_patches(mask: np.ndarray) -> np.ndarray:
    """Which patches of the model's grid are defect patches (bool ``g x g``)."""
    grid = IMAGE_SIZE // PATCH
    resized = np.asarray(Image.fromarray(mask.astype(np.float32)).resize(
        (IMAGE_SIZE, IMAGE_SIZE), Image.BILINEAR))
    share = resized.reshape(grid, PATCH, grid, PATCH).mean(axis=(1, 3))
    patches = share >= DEFECT_SHARE
    if mask.any() and not patches.any():  # a thin defect: its most covered patch
        patches.flat[int(share.argmax())] = True
    return patches


def corpus_entry(seed: int, defect_rate: float, index: int):
    """Corpus picture ``index`` at the model's size, its defect patches, (name, anomalous)."""
    item = corpus.make_item(seed, "clip", index, defect_rate=defect_rate)
    pixels = np.asarray(Image.fromarray(item.image).resize((IMAGE_SIZE, IMAGE_SIZE),
                                                           Image.BICUBIC))
    return pixels, defect_patches(item.defect_mask()).ravel(), (item.name, item.anomalous)


def build_corpus(recipe: ClipRecipe, progress: bool = True):
    """The corpus pictures at the model's size (uint8 ``[N, 3, S, S]``), their defect
    patches (bool ``[N, g*g]``) and (name, anomalous) per picture."""
    grid = IMAGE_SIZE // PATCH
    pixels = np.empty((recipe.corpus_size, IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
    patches = np.zeros((recipe.corpus_size, grid * grid), bool)
    labels = []
    entries = corpus.ordered_map(partial(corpus_entry, recipe.seed, recipe.defect_rate),
                                 range(recipe.corpus_size), corpus.worker_count())
    for i, (picture, defect, label) in enumerate(
            tqdm(entries, total=recipe.corpus_size, desc="mini CLIP corpus",
                 disable=not progress)):
        pixels[i], patches[i] = picture, defect
        labels.append(label)
    return torch.from_numpy(pixels).permute(0, 3, 1, 2), torch.from_numpy(patches), labels


def region_features(tokens: torch.Tensor, defect: torch.Tensor):
    """Mean projected token inside and outside the defect patches of each picture.

    tokens ``[B, g*g, D]``, defect ``[B, g*g]`` bool. Returns (features ``[R, D]``,
    picture index ``[R]``, anomalous ``[R]``): one "damaged" region per defective picture,
    one "flawless" region per picture with patches outside its defects.
    """
    features, owners, states = [], [], []
    for b in range(tokens.shape[0]):
        for anomalous, where in ((True, defect[b]), (False, ~defect[b])):
            if where.any():
                features.append(tokens[b][where].mean(0))
                owners.append(b)
                states.append(anomalous)
    return torch.stack(features), owners, states


def patch_state_loss(tokens: torch.Tensor, states: torch.Tensor, defect: torch.Tensor,
                     logit_scale: torch.Tensor) -> torch.Tensor:
    """Balanced cross-entropy of each patch against its picture's two state captions.

    tokens ``[B, g*g, D]`` projected, states ``[B, 2, D]`` (flawless, damaged) normalised
    text embeddings, defect ``[B, g*g]`` bool. Defect patches are a few percent of all,
    so the two kinds are averaged separately, then together.
    """
    logits = logit_scale * torch.einsum("bpd,bsd->bps", F.normalize(tokens, dim=-1), states)
    losses = F.cross_entropy(logits.flatten(0, 1), defect.flatten().long(), reduction="none")
    kinds = [losses[defect.flatten()], losses[~defect.flatten()]]
    return torch.stack([k.mean() for k in kinds if k.numel()]).mean()


def build_model(recipe: ClipRecipe) -> torch.nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(recipe.seed)
        return open_clip.create_model(CLIP_MODEL_NAME, pretrained=None)


def pretrain_clip(recipe: ClipRecipe, out_path: Path | None, work_folder: Path, *,
                  steps: int | None = None, resume: bool = True,
                  progress: bool = True) -> list[dict]:
    """Train the mini CLIP and write ``out_path`` (fp16 safetensors with the recipe hash).

    ``steps`` (default: the recipe's) runs a shorter schedule, for tests; the weights
    are then written only if ``out_path`` is given, and they name the recipe all the same
    (tests check the loop, not the committed file).
    """
    steps = recipe.steps if steps is None else steps
    with pinned_threads(recipe.threads):
        pixels, patches, labels = build_corpus(recipe, progress)
        model = build_model(recipe)
        tokenizer = open_clip.get_tokenizer(CLIP_MODEL_NAME)
        loss_fn = open_clip.loss.ClipLoss()
        optimizer = torch.optim.AdamW(param_groups(model, recipe.weight_decay), lr=recipe.lr,
                                      betas=(0.9, 0.98), eps=1e-6)
        model.train()
        model.visual.output_tokens = True  # the region term needs the patch tokens

        def step_fn(step: int) -> dict[str, float]:
            rng = np.random.default_rng([recipe.seed, 7, step])
            chosen = rng.choice(len(labels), recipe.batch_size, replace=False)
            batch = pixels[chosen]
            flip = torch.from_numpy(rng.random(len(chosen)) < 0.5)
            batch = torch.where(flip.view(-1, 1, 1, 1), batch.flip(-1), batch)
            grid = IMAGE_SIZE // PATCH
            defect = patches[chosen].view(-1, grid, grid)
            defect = torch.where(flip.view(-1, 1, 1), defect.flip(-1), defect).flatten(1)
            names = []
            for index in chosen:
                name = labels[index][0]
                names.append(corpus.pseudo_word(rng) if rng.random() < recipe.word_rate
                             else name)
            captions = [corpus.caption(n, labels[i][1], rng) for n, i in zip(names, chosen)]
            pooled, tokens = model.visual(clip_backbone.normalise_pixels(batch))
            regions, owners, states = region_features(tokens @ model.visual.proj, defect)
            region_captions = [corpus.caption(names[b], s, rng) for b, s in zip(owners, states)]
            state_captions = [corpus.caption(n, s, rng) for n in names for s in (False, True)]
            texts = model.encode_text(tokenizer(captions + region_captions + state_captions),
                                      normalize=True)
            image_texts, texts = texts[: len(captions)], texts[len(captions):]
            region_texts, state_texts = texts[: len(region_captions)], texts[len(region_captions):]
            logit_scale = model.logit_scale.exp()
            loss = loss_fn(F.normalize(pooled, dim=-1), image_texts, logit_scale)
            if recipe.region_loss:
                loss = loss + loss_fn(F.normalize(regions, dim=-1), region_texts, logit_scale)
            if recipe.patch_loss:
                loss = loss + patch_state_loss(tokens @ model.visual.proj,
                                               state_texts.view(len(names), 2, -1),
                                               defect, logit_scale)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            with torch.no_grad():  # open_clip's clamp: temperature no lower than 1/100
                model.logit_scale.clamp_(0, np.log(100))
            return {"loss": loss.item(), "logit_scale": model.logit_scale.exp().item()}

        log = run_steps(model, optimizer, step_fn, recipe=recipe, work_folder=work_folder,
                        steps=steps, resume=resume, progress=progress, desc="mini-clip")
        model.visual.output_tokens = False
        model.eval()
        if out_path is not None:
            save_weights(model, out_path, recipe, log)
    return log
