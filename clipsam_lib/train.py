"""UMCI training from cached CLIP features (method.md section 2, "Training").

Zero-shot protocol: UMCI is trained on the auxiliary dataset's TEST split (all images,
masks included) and evaluated on another dataset. CLIP is frozen, so training is split in
two steps:

1. ``prepare_training_set``: make sure every training image's stage tokens and every
   class's text features are cached, and pre-generate the 2x2 mosaics (peer augmentation,
   rate 0.2, only for the layouts in ``train.mosaic_layouts``) deterministically from the
   seed, one plan per epoch, caching their tokens like any other image. The plan (which
   cached entry and which target mask each step uses) and the masks resized to S are
   stored beside the cache.
2. ``train_umci``: reads only the cache. Loss per stage = focal (gamma 2) on the 2-class
   map + binary dice on the anomalous channel, summed over stages; Adam (lr 1e-3, betas
   0.5/0.999), batch 8, seed 111, epochs by the training dataset's layout.

Runs live in ``results/<profile>/checkpoints/<run_key>/``, the key hashing everything
that changes the weights (CLIP identity, UMCI config, training config except the epoch
count, the training set). Each epoch writes ``epoch_NNN.pt`` (weights) and ``last.pt``
(weights + optimizer); an interrupted run resumes from ``last.pt``; a finished run is just
loaded. A finished run keeps ``final.pt`` and the epochs ``train.eval_epochs`` asks for, and
drops its resume state: Adam's moments make ``last.pt`` three times the weights, and a
smoke reproduction trains about fifty runs (5 GB of resume state, which filled a CI disk).
Because each epoch's data order and mosaics depend only on (seed, epoch), asking a finished
run for more epochs trains it again from the start and ends where an uninterrupted run does.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image
from tqdm.auto import tqdm

from clipsam_lib import paths
from clipsam_lib.cleanup import mark_used
from clipsam_lib.config import EvalConfig, ProfileConfig, UMCIConfig, hashed_fields
from clipsam_lib.features import (
    ClipFeatureStore,
    cache_clip_images,
    extract_clip_features,
    read_rgb,
)
from clipsam_lib.io_utils import atomic_path, write_json_atomic, write_text_atomic
from clipsam_lib.modeling.clip_backbone import clip_dims, clip_identity
from clipsam_lib.modeling.umci import UMCI, build_umci, upsample_logits
from clipsam_lib.weights import LOAD_ERRORS
from clipsam_lib.workspace import Workspace, as_workspace

PLAN_VERSION = 1  # bump when the plan or mosaic construction changes


# -- losses --------------------------------------------------------------------------------
def focal_loss(
    log_probs: torch.Tensor, target: torch.Tensor, gamma: float = 2.0, smooth: float = 0.0
) -> torch.Tensor:
    """Mean focal loss: 2-class log-probabilities ``[B, 2, S, S]``, 0/1 target ``[B, S, S]``.

    ``smooth`` 0: the true class's exact log-probability, which keeps the gradient alive
    where the softmax saturates. ``smooth`` > 0: APRIL-GAN's (its ``FocalLoss``, smooth
    1e-5; method.md section 5 does not list it): the one-hot target clamped to
    [smooth / (C - 1), 1 - smooth] and ``smooth`` added to p_t before its log, so a
    confidently wrong pixel costs at most about -log(smooth) (11.5 at 1e-5) and passes
    almost no gradient (``train.focal_smooth``, docs/switches.md).
    """
    log_p_true = log_probs.gather(1, target.long()[:, None]).squeeze(1)
    if smooth == 0:
        return (-((1 - log_p_true.exp()) ** gamma) * log_p_true).mean()
    p_true = log_p_true.exp()
    p_other = 1 - p_true  # the other classes' probabilities, summed
    p_t = (1 - smooth) * p_true + smooth / (log_probs.shape[1] - 1) * p_other + smooth
    return (-((1 - p_t) ** gamma) * p_t.log()).mean()


def dice_loss(prob: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """Binary dice loss per image (peer: smooth 1), averaged: ``[B, S, S]`` each."""
    prob, target = prob.flatten(1), target.float().flatten(1)
    dice = (2 * (prob * target).sum(1) + smooth) / (prob.sum(1) + target.sum(1) + smooth)
    return 1 - dice.mean()


def umci_loss(
    stage_logits: list[torch.Tensor],
    target: torch.Tensor,
    gamma: float = 2.0,
    align_corners: bool = True,
    smooth: float = 0.0,
) -> tuple[torch.Tensor, float, float]:
    """Sum over stages of focal + dice on the maps at the target's size.

    ``stage_logits`` are UMCI's per-stage ``[B, 2, g, g]`` logits; they are upsampled
    exactly as in UMCI's maps (``umci.align_corners``) and softmaxed here; ``smooth`` is
    the focal term's (``focal_loss``). Returns the loss and its two parts.
    """
    focal = dice = 0
    for logits in stage_logits:
        upsampled = upsample_logits(logits, tuple(target.shape[-2:]), align_corners)
        log_probs = upsampled.log_softmax(dim=1)
        focal = focal + focal_loss(log_probs, target, gamma, smooth)
        dice = dice + dice_loss(log_probs[:, 1].exp(), target)
    return focal + dice, focal.item(), dice.item()


# -- the training set ------------------------------------------------------------------------
@dataclass
class TrainingSet:
    """Prepared, cache-only training data: which entry and target each step uses."""

    keys: list[str]  # image content hash of item i (its tokens are in the CLIP cache)
    classes: list[str]  # class name of item i
    targets: np.ndarray  # [n_items, S*S/8] packed bits of the S x S masks
    epochs: list[list[int]]  # per epoch: item indices in step order
    image_size: int
    data_key: str

    def target(self, items: list[int]) -> torch.Tensor:
        side = self.image_size
        bits = np.unpackbits(self.targets[items], axis=1, count=side * side)
        return torch.from_numpy(bits.reshape(len(items), side, side))


def prepare_training_set(
    workspace: Workspace | ProfileConfig,
    train_dataset: str,
    epochs: int | None = None,
    *,
    progress: bool = True,
    mosaic_batch: int = 8,
) -> TrainingSet:
    """Cache everything training needs (tokens, texts, mosaics, masks); build the plan.

    This is the only step that may run the CLIP backbone, the workspace's one: images and
    mosaics are encoded in batches of ``mosaic_batch``. Its output is reused when the same
    data, seed, mosaic settings and number of epochs are asked for again.
    """
    ws = as_workspace(workspace)
    profile = ws.profile
    dataset = ws.dataset(train_dataset)
    tcfg = profile.train
    epochs = epochs or tcfg.epochs[dataset.spec.layout]
    recs = ws.train_records(train_dataset)
    extract_clip_features(profile, train_dataset, recs, backbone=ws.clip, progress=progress)
    key = _data_key(profile, train_dataset, recs, epochs)
    folder = ClipFeatureStore(profile).cache.dir / "trainsets" / key
    if (folder / "plan.json").is_file() and (folder / "targets.npy").is_file():
        stored = _load_training_set(folder, profile.clip.image_size, key)
        store = ClipFeatureStore(profile)
        # A plan is only as good as the cached tokens it names (a cleared cache, another
        # cache layout): if one is gone, the plan and its mosaics are made again.
        if all(store.has_image(k) for k in set(stored.keys)):
            return stored

    store = ClipFeatureStore(profile)
    root = dataset.root
    keys: list[str | None] = [store.image_key(train_dataset, rec) for rec in recs]
    classes = [rec["cls_name"] for rec in recs]
    side = profile.clip.image_size
    targets = [_packed(_target_mask(root, rec, profile.eval), side) for rec in recs]

    pending: list[tuple[np.ndarray, int]] = []  # mosaics waiting for one batched encoding

    def encode_pending() -> None:
        new_keys = cache_clip_images(profile, [image for image, _ in pending], backbone=ws.clip)
        for (_, item), new_key in zip(pending, new_keys):
            keys[item] = new_key
        pending.clear()

    mosaic_on = dataset.spec.layout in tcfg.mosaic_layouts and tcfg.mosaic_rate > 0
    by_class: dict[str, list[int]] = {}
    for i, name in enumerate(classes):
        by_class.setdefault(name, []).append(i)
    plan: list[list[int]] = []
    for epoch in tqdm(range(epochs), desc="mosaics", disable=not (progress and mosaic_on)):
        rng = np.random.default_rng([tcfg.seed, epoch])
        order = [int(i) for i in rng.permutation(len(recs))]
        if mosaic_on:
            flags = rng.random(len(order)) < tcfg.mosaic_rate
            for position in np.flatnonzero(flags):
                members = by_class[classes[order[position]]]
                picks = [members[int(j)] for j in rng.integers(0, len(members), 4)]
                image, mask = _mosaic(root, [recs[i] for i in picks], profile.eval)
                keys.append(None)  # filled in by encode_pending
                classes.append(classes[order[position]])
                targets.append(_packed(mask, side))
                order[position] = len(keys) - 1
                pending.append((image, len(keys) - 1))
                if len(pending) == mosaic_batch:
                    encode_pending()
        plan.append(order)
    if pending:
        encode_pending()
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(folder / "targets.npy") as tmp, open(tmp, "wb") as handle:
        np.save(handle, np.stack(targets))
    write_json_atomic(folder / "plan.json", {"keys": keys, "classes": classes, "epochs": plan})
    return TrainingSet(keys, classes, np.stack(targets), plan, side, key)


def _data_key(profile: ProfileConfig, train_dataset: str, recs: list[dict], epochs: int) -> str:
    """What determines the training set: records and their files' bytes, seed, mosaics,
    masks, size, epochs."""
    from clipsam_lib.data.fingerprint import records_fingerprint

    tcfg = profile.train
    spec = profile.dataset(train_dataset)
    blob = {
        "version": PLAN_VERSION,
        "dataset": train_dataset,
        "layout": spec.layout,
        "records": [(r["img_path"], r["mask_path"], r["cls_name"]) for r in recs],
        # The same paths can hold other pictures (another draw of the embedded benchmark).
        "files": records_fingerprint(profile, train_dataset, recs),
        "seed": tcfg.seed,
        "mosaic": [tcfg.mosaic_rate, spec.layout in tcfg.mosaic_layouts],
        "mask_threshold": profile.eval.mask_threshold,
        "mask_binarization": profile.eval.mask_binarization,
        "image_size": profile.clip.image_size,
        "epochs": epochs,
    }
    return _short_hash(blob)


def _load_training_set(folder: Path, side: int, key: str) -> TrainingSet:
    plan = json.loads((folder / "plan.json").read_text())
    targets = np.load(folder / "targets.npy")
    return TrainingSet(plan["keys"], plan["classes"], targets, plan["epochs"], side, key)


def _target_mask(root: Path, rec: dict[str, Any], eval_cfg: EvalConfig) -> np.ndarray:
    """The record's mask as uint8 0/255 at its image size (zeros for normal images),
    binarized as the evaluation does (``eval.mask_threshold``, ``eval.mask_binarization``)."""
    from clipsam_lib.data.io import DatasetError, read_mask

    if rec.get("mask_free") and rec.get("anomaly"):
        raise DatasetError(
            f"{rec['img_path']} is anomalous but its dataset has no masks, so UMCI cannot be "
            "trained on it: use it as a test set (image-level metrics), or give its masks.")
    if not rec.get("mask_path"):
        return np.zeros((rec["height"], rec["width"]), np.uint8)
    mask = read_mask(root / rec["mask_path"], eval_cfg.mask_threshold, eval_cfg.mask_binarization)
    return mask.astype(np.uint8) * 255


def _packed(mask: np.ndarray, side: int) -> np.ndarray:
    """Resize a 0/255 mask to side x side (bilinear, > 0.5 as the peer) and pack its bits."""
    resized = np.asarray(Image.fromarray(mask).resize((side, side), Image.BILINEAR)) > 127
    return np.packbits(resized.reshape(-1))


def _mosaic(root: Path, recs: list[dict], eval_cfg: EvalConfig) -> tuple[np.ndarray, np.ndarray]:
    """2x2 tiling of four images (and masks) of one class, each at the first one's size."""
    height, width = recs[0]["height"], recs[0]["width"]
    image = np.zeros((2 * height, 2 * width, 3), np.uint8)
    mask = np.zeros((2 * height, 2 * width), np.uint8)
    for i, rec in enumerate(recs):
        y, x = (i // 2) * height, (i % 2) * width
        tile = Image.fromarray(read_rgb(root / rec["img_path"])).resize(
            (width, height), Image.BICUBIC
        )
        tile_mask = Image.fromarray(_target_mask(root, rec, eval_cfg)).resize(
            (width, height), Image.NEAREST
        )
        image[y : y + height, x : x + width] = np.asarray(tile)
        mask[y : y + height, x : x + width] = np.asarray(tile_mask)
    return image, mask


# -- the model --------------------------------------------------------------------------------
def init_umci(profile: ProfileConfig) -> UMCI:
    """A freshly initialised UMCI (seeded by ``train.seed``): the 'untrained' reference."""
    width, embed_dim = clip_dims(profile.clip)
    # Parameters are initialised on the CPU: seed its generator alone (torch.manual_seed
    # would also reseed every CUDA generator of the process).
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(profile.train.seed)
        return build_umci(profile.umci, width, embed_dim, len(profile.clip.stages))


def load_umci(checkpoint: str | Path) -> UMCI:
    """A UMCI rebuilt from a checkpoint written by ``train_umci`` (eval mode)."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    fields = state["umci_config"]
    cfg = UMCIConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()})
    umci = build_umci(cfg, state["clip_width"], state["embed_dim"], state["n_stages"])
    umci.load_state_dict(state["umci"])
    return umci.eval()


# -- training --------------------------------------------------------------------------------
@dataclass
class TrainResult:
    """Where a training run lives and how its loss went."""

    checkpoint: Path  # final.pt
    run_dir: Path
    losses: pd.DataFrame  # epoch, step, loss, focal, dice
    epochs: int
    resumed_from: int  # epochs already done when this call started


def run_key(workspace: Workspace | ProfileConfig, train_dataset: str) -> str:
    """Hash of everything that changes the weights (the epoch count excepted)."""
    ws = as_workspace(workspace)
    profile = ws.profile
    train_cfg = hashed_fields("train", dataclasses.asdict(profile.train))
    for not_weights in ("epochs", "token_memory_gb", "seeds", "eval_epochs"):
        train_cfg.pop(not_weights)
    recs = ws.train_records(train_dataset)
    blob = {
        "clip": clip_identity(profile.clip),
        "umci": dataclasses.asdict(profile.umci),
        "train": train_cfg,
        "train_dataset": _data_key(profile, train_dataset, recs, epochs=0),
    }
    return _short_hash(blob)


def run_dir(workspace: Workspace | ProfileConfig, train_dataset: str) -> Path:
    ws = as_workspace(workspace)
    return (
        paths.results_subdir(ws.profile, "checkpoints")
        / f"{train_dataset}-{run_key(ws, train_dataset)}"
    )


def train_umci(
    workspace: Workspace | ProfileConfig,
    train_dataset: str,
    *,
    epochs: int | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train UMCI on ``train_dataset``'s test split; resume or just load when possible.

    ``epochs`` defaults to ``profile.train.epochs[<layout of train_dataset>]``.
    """
    ws = as_workspace(workspace)
    profile = ws.profile
    epochs = epochs or profile.train.epochs[profile.dataset(train_dataset).layout]
    folder = run_dir(ws, train_dataset)
    final = folder / "final.pt"
    if final.is_file() and _saved_epoch(final) == epochs:
        mark_used(folder)
        return TrainResult(final, folder, _read_losses(folder, epochs), epochs, epochs)

    data = prepare_training_set(ws, train_dataset, epochs, progress=progress)
    device = ws.device
    umci = init_umci(profile).to(device).train()
    optimizer = torch.optim.Adam(
        umci.parameters(), lr=profile.train.lr, betas=tuple(profile.train.betas)
    )
    done = _resume(folder, umci, optimizer, epochs)
    losses = _read_losses(folder, done)
    store = ClipFeatureStore(profile)
    texts = {
        name: t for name, t in zip(sorted(set(data.classes)), store.text(sorted(set(data.classes))))
    }
    reader = _TokenReader(store, data.keys, token_budget_bytes(profile.train))
    write_json_atomic(folder / "run.json", _run_record(profile, train_dataset, data))
    mark_used(folder)

    for epoch in range(done, epochs):
        rows = _train_epoch(profile, umci, optimizer, data, epoch, texts, reader, device, progress)
        losses = pd.concat([losses, pd.DataFrame(rows)], ignore_index=True)
        _save_epoch(folder, profile, umci, optimizer, epoch + 1, losses)
    _save_state(final, profile, umci, None, epochs)
    _drop_resume_state(folder, epochs, profile.train.eval_epochs or [])
    return TrainResult(final, folder, losses, epochs, done)


def _train_epoch(
    profile, umci, optimizer, data, epoch, texts, reader, device, progress
) -> list[dict]:
    batch_size = profile.train.batch_size
    order = data.epochs[epoch]
    rows = []
    steps = range(0, len(order), batch_size)
    for step, start in enumerate(
        tqdm(steps, desc=f"epoch {epoch + 1}", disable=not progress, leave=False)
    ):
        items = order[start : start + batch_size]
        tokens = [t.to(device) for t in reader.batch(items)]
        text = torch.stack([texts[data.classes[i]] for i in items]).to(device)
        target = data.target(items).to(device)
        out = umci(tokens, text)  # maps on the patch grid; the loss upsamples the logits
        loss, focal, dice = umci_loss(
            out.stage_logits, target, profile.train.focal_gamma, profile.umci.align_corners,
            profile.train.focal_smooth,
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        rows.append(
            {"epoch": epoch + 1, "step": step, "loss": loss.item(), "focal": focal, "dice": dice}
        )
    return rows


def time_epochs(
    workspace: Workspace | ProfileConfig,
    train_dataset: str,
    epochs: int = 2,
    budget_bytes: int | None = None,
) -> list[dict[str, float]]:
    """Seconds of ``epochs`` fresh training epochs and the part spent reading tokens.

    A benchmark of the token reader (nothing is saved): ``budget_bytes`` replaces
    ``train.token_memory_gb`` (0: every item is read from the cache every epoch). The
    training set must fit the plan of ``epochs`` epochs (prepared here if needed).
    """
    ws = as_workspace(workspace)
    profile = ws.profile
    data = prepare_training_set(ws, train_dataset, progress=False)
    umci = init_umci(profile).to(ws.device).train()
    optimizer = torch.optim.Adam(umci.parameters(), lr=profile.train.lr,
                                 betas=tuple(profile.train.betas))
    store = ClipFeatureStore(profile)
    names = sorted(set(data.classes))
    texts = dict(zip(names, store.text(names)))
    budget = token_budget_bytes(profile.train) if budget_bytes is None else budget_bytes
    reader = _TokenReader(store, data.keys, budget)
    timings = []
    for epoch in range(min(epochs, len(data.epochs))):
        read_before, start = reader.read_seconds, time.perf_counter()
        _train_epoch(profile, umci, optimizer, data, epoch, texts, reader, ws.device, False)
        timings.append({"epoch": epoch + 1, "seconds": time.perf_counter() - start,
                        "read_seconds": reader.read_seconds - read_before,
                        "items": len(data.epochs[epoch])})
    return timings


def token_budget_bytes(train_cfg: Any) -> int:
    """RAM for training tokens: ``train.token_memory_gb``, or half the available memory."""
    if train_cfg.token_memory_gb is not None:
        return int(train_cfg.token_memory_gb * 2**30)
    import psutil

    return int(psutil.virtual_memory().available // 2)


class _TokenReader:
    """Stage tokens of plan items from the cache, kept in RAM in the cache's compact dtype
    (fp16) while they fit in ``budget_bytes``; the rest is read from disk when used.

    ``read_seconds`` adds up the time spent reading (the benchmark's I/O share).
    """

    def __init__(self, store: ClipFeatureStore, keys: list[str], budget_bytes: int):
        self.store = store
        self.keys = keys
        self.budget = budget_bytes
        self.memory: dict[int, torch.Tensor] = {}
        self.used = 0
        self.read_seconds = 0.0

    def item(self, i: int) -> torch.Tensor:
        """``[n_stages, g*g, C]`` in the storage dtype."""
        if i in self.memory:
            return self.memory[i]
        start = time.perf_counter()
        tokens = self.store.stored_tokens(self.keys[i])
        self.read_seconds += time.perf_counter() - start
        if tokens is None:
            raise KeyError(
                f"CLIP tokens of training item {i} (image {self.keys[i][:12]}) left the cache "
                f"{self.store.cache.dir}; run train.prepare_training_set again."
            )
        size = tokens.numel() * tokens.element_size()
        if self.used + size <= self.budget:
            self.memory[i] = tokens
            self.used += size
        return tokens

    def batch(self, items: list[int]) -> list[torch.Tensor]:
        """One float32 ``[B, g*g, C]`` tensor per stage."""
        stacked = torch.stack([self.item(i) for i in items]).float()  # [B, n_stages, g*g, C]
        # Contiguous per stage, as the layers saw them before: the same GEMM, the same sums.
        return [stage.contiguous() for stage in stacked.unbind(1)]


def _resume(folder: Path, umci: UMCI, optimizer: torch.optim.Optimizer, epochs: int) -> int:
    """Load ``last.pt`` when it exists; returns the number of epochs already done.

    An unreadable ``last.pt`` (a crash while it was written by something other than this
    code, a disk error) falls back to the newest readable ``epoch_NNN.pt``, with a warning:
    those hold the weights only, so Adam's moments restart from zero. Without ``last.pt``,
    a finished run of another epoch count gives the kept epoch asked for, or starts again.
    """
    last = folder / "last.pt"
    if not last.is_file():
        return _resume_finished_run(folder, umci, epochs)
    state = _load_or_none(last)
    if state is None:
        return _resume_from_epoch_file(folder, umci, epochs, last)
    if state["epoch"] > epochs:  # fewer epochs asked than done: that epoch's weights, if kept
        return _load_kept_epoch(folder, umci, epochs, state["epoch"])
    umci.load_state_dict(state["umci"])
    optimizer.load_state_dict(state["optimizer"])
    return state["epoch"]


def _resume_finished_run(folder: Path, umci: UMCI, epochs: int) -> int:
    done = _saved_epoch(folder / "final.pt")  # None: no (readable) finished run
    if done is None:
        return 0
    if done > epochs:
        return _load_kept_epoch(folder, umci, epochs, done)
    warnings.warn(f"{folder} finished {done} epochs and kept no optimizer state (a finished "
                  f"run drops it); training {epochs} epochs again from the start, which ends "
                  "where an uninterrupted run does.", stacklevel=4)
    _remove_checkpoints(folder)
    return 0


def _load_kept_epoch(folder: Path, umci: UMCI, epochs: int, done: int) -> int:
    """Fewer epochs asked than done: that epoch's weights when ``train.eval_epochs`` kept
    them, else training again from the start."""
    kept = _load_or_none(folder / f"epoch_{epochs:03d}.pt")
    if kept is None:
        warnings.warn(f"{folder} trained {done} epochs and kept no checkpoint of epoch "
                      f"{epochs} (train.eval_epochs keeps chosen ones); training again from "
                      "the start.", stacklevel=4)
        _remove_checkpoints(folder)
        return 0
    umci.load_state_dict(kept["umci"])
    return epochs


def _remove_checkpoints(folder: Path) -> None:
    for path in [folder / "last.pt", *folder.glob("epoch_*.pt")]:
        path.unlink(missing_ok=True)


def _load_or_none(path: Path) -> dict[str, Any] | None:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except LOAD_ERRORS:
        return None


def _resume_from_epoch_file(folder: Path, umci: UMCI, epochs: int, broken: Path) -> int:
    for candidate in sorted(folder.glob("epoch_*.pt"), reverse=True):
        state = _load_or_none(candidate)
        if state is not None and state["epoch"] <= epochs:
            umci.load_state_dict(state["umci"])
            warnings.warn(
                f"{broken} is unreadable; resuming from {candidate.name} (epoch "
                f"{state['epoch']}) with a fresh optimizer state.", stacklevel=3)
            return int(state["epoch"])
    warnings.warn(f"{broken} is unreadable and no epoch checkpoint is; training starts again.",
                  stacklevel=3)
    return 0


def _save_epoch(folder, profile, umci, optimizer, epoch: int, losses: pd.DataFrame) -> None:
    _save_state(folder / f"epoch_{epoch:03d}.pt", profile, umci, None, epoch)
    write_text_atomic(folder / "losses.csv", losses.to_csv(index=False))
    _save_state(folder / "last.pt", profile, umci, optimizer, epoch)  # last: marks the epoch done
    _prune_epochs(folder, epoch, profile.train.eval_epochs or [])


def _prune_epochs(folder: Path, newest: int, keep: list[int]) -> None:
    """Keep the newest epoch file (the fallback of an unreadable last.pt) and the epochs
    ``train.eval_epochs`` asks for; a paper-size UMCI is ~230 MB a file, 15 epochs a run."""
    for path in folder.glob("epoch_*.pt"):
        epoch = int(path.stem.split("_")[1])
        if epoch != newest and epoch not in keep:
            path.unlink(missing_ok=True)


def _drop_resume_state(folder: Path, epochs: int, keep: list[int]) -> None:
    """A finished run needs no optimizer state, and ``final.pt`` holds the last epoch's
    weights: keep only the epochs ``train.eval_epochs`` asks for besides it."""
    (folder / "last.pt").unlink(missing_ok=True)
    if epochs not in keep:
        (folder / f"epoch_{epochs:03d}.pt").unlink(missing_ok=True)


def _saved_epoch(path: Path) -> int | None:
    """The epoch a checkpoint holds, or None when it is unreadable (then trained again)."""
    state = _load_or_none(path)
    return None if state is None else int(state["epoch"])


def _to_cpu(value: Any) -> Any:
    """Tensors (nested in dicts and lists, as in an optimizer state) moved to the CPU, so a
    checkpoint written on a GPU loads anywhere."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {k: _to_cpu(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_to_cpu(v) for v in value)
    return value


def _save_state(path: Path, profile, umci: UMCI, optimizer, epoch: int) -> None:
    width, embed_dim = clip_dims(profile.clip)
    state = {
        "umci": _to_cpu(umci.state_dict()),
        "umci_config": dataclasses.asdict(profile.umci),
        "clip_width": width,
        "embed_dim": embed_dim,
        "n_stages": len(profile.clip.stages),
        "epoch": epoch,
    }
    if optimizer is not None:
        state["optimizer"] = _to_cpu(optimizer.state_dict())
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def _read_losses(folder: Path, up_to_epoch: int) -> pd.DataFrame:
    file = folder / "losses.csv"
    if not file.is_file():
        return pd.DataFrame(columns=["epoch", "step", "loss", "focal", "dice"])
    losses = pd.read_csv(file)
    return losses[losses["epoch"] <= up_to_epoch].reset_index(drop=True)


def _run_record(profile: ProfileConfig, train_dataset: str, data: TrainingSet) -> dict[str, Any]:
    return {
        "profile": profile.name,
        "train_dataset": train_dataset,
        "clip": clip_identity(profile.clip),
        "umci": dataclasses.asdict(profile.umci),
        "train": dataclasses.asdict(profile.train),
        "training_set": data.data_key,
        "items": len(data.keys),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def _short_hash(blob: Any) -> str:
    return hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()[:12]


__all__ = [
    "TrainResult",
    "TrainingSet",
    "dice_loss",
    "focal_loss",
    "init_umci",
    "load_umci",
    "prepare_training_set",
    "run_dir",
    "run_key",
    "time_epochs",
    "token_budget_bytes",
    "train_umci",
    "umci_loss",
]
