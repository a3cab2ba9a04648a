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
(weights + optimizer); a re-run resumes from ``last.pt``; a finished run is just loaded.
Because each epoch's data order and mosaics depend only on (seed, epoch), asking for more
epochs later continues the same run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image
from tqdm.auto import tqdm

from clipsam_lib import paths
from clipsam_lib.config import EvalConfig, ProfileConfig, UMCIConfig
from clipsam_lib.features import (
    ClipFeatureStore,
    cache_clip_images,
    clip_score_lookup,
    extract_clip_features,
    read_rgb,
)
from clipsam_lib.io_utils import atomic_path, write_json_atomic, write_text_atomic
from clipsam_lib.modeling.clip_backbone import clip_dims, clip_identity, resolve_device
from clipsam_lib.modeling.umci import UMCI, build_umci, upsample_logits

PLAN_VERSION = 1  # bump when the plan or mosaic construction changes


# -- losses --------------------------------------------------------------------------------
def focal_loss(log_probs: torch.Tensor, target: torch.Tensor, gamma: float = 2.0) -> torch.Tensor:
    """Mean focal loss: 2-class log-probabilities ``[B, 2, S, S]``, 0/1 target ``[B, S, S]``.

    Taking log-probabilities (log-softmax of the logits) keeps the gradient alive where
    the softmax saturates, which a clamp on probabilities would cut off.
    """
    log_p_true = log_probs.gather(1, target.long()[:, None]).squeeze(1)
    return (-((1 - log_p_true.exp()) ** gamma) * log_p_true).mean()


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
) -> tuple[torch.Tensor, float, float]:
    """Sum over stages of focal + dice on the maps at the target's size.

    ``stage_logits`` are UMCI's per-stage ``[B, 2, g, g]`` logits; they are upsampled
    exactly as in UMCI's maps (``umci.align_corners``) and softmaxed here. Returns the loss
    and its two parts.
    """
    focal = dice = 0
    for logits in stage_logits:
        upsampled = upsample_logits(logits, tuple(target.shape[-2:]), align_corners)
        log_probs = upsampled.log_softmax(dim=1)
        focal = focal + focal_loss(log_probs, target, gamma)
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


def _test_split(
    profile: ProfileConfig, dataset_name: str, max_per_class: int | None
) -> list[dict[str, Any]]:
    """A dataset's test split: the profile's classes, at most ``max_per_class`` each."""
    from clipsam_lib.data import load_or_build_index, records

    spec = profile.dataset(dataset_name)
    root = paths.dataset_root(profile, dataset_name)
    index = load_or_build_index(
        root, spec.layout, spec.split, mask_threshold=profile.eval.mask_threshold
    )
    return records(index, "test", spec.classes, max_per_class)


def training_records(profile: ProfileConfig, train_dataset: str) -> list[dict[str, Any]]:
    """The auxiliary dataset's test split (all classes of the profile, optional subset)."""
    return _test_split(profile, train_dataset, profile.train.max_images_per_class)


def prepare_training_set(
    profile: ProfileConfig,
    train_dataset: str,
    epochs: int | None = None,
    *,
    progress: bool = True,
) -> TrainingSet:
    """Cache everything training needs (tokens, texts, mosaics, masks); build the plan.

    This is the only step that may run the CLIP backbone. Its output is reused when the
    same data, seed, mosaic settings and number of epochs are asked for again.
    """
    spec = profile.dataset(train_dataset)
    tcfg = profile.train
    epochs = epochs or tcfg.epochs[spec.layout]
    recs = training_records(profile, train_dataset)
    extract_clip_features(profile, train_dataset, recs, progress=progress)
    key = _data_key(profile, train_dataset, recs, epochs)
    folder = ClipFeatureStore(profile).cache.dir / "trainsets" / key
    if (folder / "plan.json").is_file() and (folder / "targets.npy").is_file():
        return _load_training_set(folder, profile.clip.image_size, key)

    store = ClipFeatureStore(profile)
    root = paths.dataset_root(profile, train_dataset)
    keys = [store.image_key(train_dataset, rec) for rec in recs]
    classes = [rec["cls_name"] for rec in recs]
    side = profile.clip.image_size
    targets = [_packed(_target_mask(root, rec, profile.eval), side) for rec in recs]

    mosaic_on = spec.layout in tcfg.mosaic_layouts and tcfg.mosaic_rate > 0
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
                keys.append(cache_clip_images(profile, [image])[0])
                classes.append(classes[order[position]])
                targets.append(_packed(mask, side))
                order[position] = len(keys) - 1
        plan.append(order)
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(folder / "targets.npy") as tmp, open(tmp, "wb") as handle:
        np.save(handle, np.stack(targets))
    write_json_atomic(folder / "plan.json", {"keys": keys, "classes": classes, "epochs": plan})
    return TrainingSet(keys, classes, np.stack(targets), plan, side, key)


def _data_key(profile: ProfileConfig, train_dataset: str, recs: list[dict], epochs: int) -> str:
    tcfg = profile.train
    spec = profile.dataset(train_dataset)
    blob = {
        "version": PLAN_VERSION,
        "dataset": train_dataset,
        "layout": spec.layout,
        "records": [(r["img_path"], r["mask_path"], r["cls_name"]) for r in recs],
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
    from clipsam_lib.data.io import read_mask

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
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(profile.train.seed)
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


def run_key(profile: ProfileConfig, train_dataset: str) -> str:
    """Hash of everything that changes the weights (the epoch count excepted)."""
    train_cfg = dataclasses.asdict(profile.train)
    train_cfg.pop("epochs")
    recs = training_records(profile, train_dataset)
    blob = {
        "clip": clip_identity(profile.clip),
        "umci": dataclasses.asdict(profile.umci),
        "train": train_cfg,
        "train_dataset": _data_key(profile, train_dataset, recs, epochs=0),
    }
    return _short_hash(blob)


def run_dir(profile: ProfileConfig, train_dataset: str) -> Path:
    return (
        paths.results_subdir(profile, "checkpoints")
        / f"{train_dataset}-{run_key(profile, train_dataset)}"
    )


def train_umci(
    profile: ProfileConfig,
    train_dataset: str,
    *,
    epochs: int | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train UMCI on ``train_dataset``'s test split; resume or just load when possible.

    ``epochs`` defaults to ``profile.train.epochs[<layout of train_dataset>]``.
    """
    epochs = epochs or profile.train.epochs[profile.dataset(train_dataset).layout]
    folder = run_dir(profile, train_dataset)
    final = folder / "final.pt"
    if final.is_file() and torch.load(final, weights_only=True)["epoch"] == epochs:
        return TrainResult(final, folder, _read_losses(folder, epochs), epochs, epochs)

    data = prepare_training_set(profile, train_dataset, epochs, progress=progress)
    device = resolve_device(profile.device)
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
    reader = _TokenReader(store, data.keys)
    write_json_atomic(folder / "run.json", _run_record(profile, train_dataset, data))

    for epoch in range(done, epochs):
        rows = _train_epoch(profile, umci, optimizer, data, epoch, texts, reader, device, progress)
        losses = pd.concat([losses, pd.DataFrame(rows)], ignore_index=True)
        _save_epoch(folder, profile, umci, optimizer, epoch + 1, losses)
    _save_state(final, profile, umci, None, epochs)
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
            out.stage_logits, target, profile.train.focal_gamma, profile.umci.align_corners
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        rows.append(
            {"epoch": epoch + 1, "step": step, "loss": float(loss), "focal": focal, "dice": dice}
        )
    return rows


class _TokenReader:
    """Stage tokens of plan items from the cache, kept in memory while they fit."""

    def __init__(self, store: ClipFeatureStore, keys: list[str], budget_bytes: int = 2 << 30):
        self.store = store
        self.keys = keys
        self.budget = budget_bytes
        self.memory: dict[int, list[torch.Tensor]] = {}
        self.used = 0

    def item(self, i: int) -> list[torch.Tensor]:
        if i in self.memory:
            return self.memory[i]
        tokens = self.store.tokens_for_key(self.keys[i])
        if tokens is None:
            raise KeyError(
                f"CLIP tokens of training item {i} (image {self.keys[i][:12]}) left the cache "
                f"{self.store.cache.dir}; run train.prepare_training_set again."
            )
        size = sum(t.numel() * t.element_size() for t in tokens)
        if self.used + size <= self.budget:
            self.memory[i] = tokens
            self.used += size
        return tokens

    def batch(self, items: list[int]) -> list[torch.Tensor]:
        per_item = [self.item(i) for i in items]
        return [torch.stack(stage) for stage in zip(*per_item)]


def _resume(folder: Path, umci: UMCI, optimizer: torch.optim.Optimizer, epochs: int) -> int:
    """Load ``last.pt`` when it exists; returns the number of epochs already done."""
    last = folder / "last.pt"
    if not last.is_file():
        return 0
    state = torch.load(last, map_location="cpu", weights_only=True)
    if state["epoch"] > epochs:  # fewer epochs asked than done: start from that epoch's weights
        state = torch.load(folder / f"epoch_{epochs:03d}.pt", map_location="cpu", weights_only=True)
        umci.load_state_dict(state["umci"])
        return epochs
    umci.load_state_dict(state["umci"])
    optimizer.load_state_dict(state["optimizer"])
    return state["epoch"]


def _save_epoch(folder, profile, umci, optimizer, epoch: int, losses: pd.DataFrame) -> None:
    _save_state(folder / f"epoch_{epoch:03d}.pt", profile, umci, None, epoch)
    write_text_atomic(folder / "losses.csv", losses.to_csv(index=False))
    _save_state(folder / "last.pt", profile, umci, optimizer, epoch)  # last: marks the epoch done


def _save_state(path: Path, profile, umci: UMCI, optimizer, epoch: int) -> None:
    width, embed_dim = clip_dims(profile.clip)
    state = {
        "umci": umci.state_dict(),
        "umci_config": dataclasses.asdict(profile.umci),
        "clip_width": width,
        "embed_dim": embed_dim,
        "n_stages": len(profile.clip.stages),
        "epoch": epoch,
    }
    if optimizer is not None:
        state["optimizer"] = optimizer.state_dict()
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


# -- rough maps and their metrics ------------------------------------------------------------
def rough_maps(
    profile: ProfileConfig,
    umci: UMCI,
    dataset_name: str,
    records: list[dict[str, Any]],
    batch_size: int = 16,
) -> dict[str, np.ndarray]:
    """``{img_path: float32 S x S rough map}`` from cached tokens (no backbone)."""
    store = ClipFeatureStore(profile)
    side = profile.clip.image_size
    texts = store.text(sorted({r["cls_name"] for r in records}))
    text_of = dict(zip(sorted({r["cls_name"] for r in records}), texts))
    device = next(umci.parameters()).device
    umci.eval()
    maps: dict[str, np.ndarray] = {}
    for start in range(0, len(records), batch_size):
        chunk = records[start : start + batch_size]
        per_image = [store.tokens(dataset_name, rec) for rec in chunk]
        tokens = [torch.stack(stage).to(device) for stage in zip(*per_image)]
        text = torch.stack([text_of[rec["cls_name"]] for rec in chunk]).to(device)
        with torch.no_grad():
            rough = umci(tokens, text, side).rough_map.cpu().numpy().astype(np.float32)
        maps.update({rec["img_path"]: m for rec, m in zip(chunk, rough)})
    store.save_manifest(dataset_name)
    return maps


def eval_records(profile: ProfileConfig, dataset_name: str) -> list[dict[str, Any]]:
    """The evaluation records of a dataset (test split, eval subset)."""
    return _test_split(profile, dataset_name, profile.eval.max_images_per_class)


def rough_map_metrics(
    profile: ProfileConfig,
    umci: UMCI,
    dataset_name: str,
    records: list[dict[str, Any]] | None = None,
    extra_columns: dict[str, Any] | None = None,
) -> pd.DataFrame:
    """Per-class metrics of UMCI's rough maps through ``clipsam_lib.evaluate.evaluate_maps``.

    ``records`` default to the dataset's evaluation records; their CLIP features are
    extracted first if missing. Metrics are fractions, one row per class.
    """
    from clipsam_lib.evaluate import evaluate_maps

    records = records if records is not None else eval_records(profile, dataset_name)
    extract_clip_features(profile, dataset_name, records, progress=False)
    maps = rough_maps(profile, umci, dataset_name, records)
    return evaluate_maps(
        records,
        paths.dataset_root(profile, dataset_name),
        lambda rec: maps[rec["img_path"]],
        profile.eval,
        profile.clip.image_size,
        dataset_name,
        clip_scores=clip_score_lookup(profile, dataset_name, records),
        extra_columns=extra_columns,
    )


def profile_records(profile: ProfileConfig) -> dict[str, list[dict[str, Any]]]:
    """Every record the profile's notebooks touch, per dataset: training sets (their test
    split, training subset) and evaluation sets (eval subset), without duplicates."""
    wanted: dict[str, dict[str, dict[str, Any]]] = {}
    train_sets = {d.train for d in profile.directions}
    for spec in profile.datasets:
        chosen = wanted.setdefault(spec.name, {})
        if spec.name in train_sets:
            chosen.update((r["img_path"], r) for r in training_records(profile, spec.name))
        chosen.update((r["img_path"], r) for r in eval_records(profile, spec.name))
    return {name: list(recs.values()) for name, recs in wanted.items()}


def extract_profile_features(profile: ProfileConfig, *, progress: bool = True) -> list[Any]:
    """Fill the CLIP cache for every dataset of the profile; one ExtractionReport each."""
    return [
        extract_clip_features(profile, name, recs, progress=progress)
        for name, recs in profile_records(profile).items()
    ]


def rough_map_comparison(profile: ProfileConfig, results: dict[str, TrainResult]) -> pd.DataFrame:
    """Rough-map metrics, untrained vs trained UMCI, per direction, class and macro mean.

    ``results`` maps each direction's training dataset to its ``TrainResult``; the
    untrained model is ``init_umci`` (where training starts). Every row carries the
    provenance columns. Metrics are fractions.
    """
    from clipsam_lib.evaluate import macro_mean
    from clipsam_lib.provenance import dataset_index_hash, provenance_columns

    frames = []
    for direction in profile.directions:
        result = results[direction.train]
        models = {"untrained": init_umci(profile), "trained": load_umci(result.checkpoint)}
        for test_set in direction.test:
            index_key = dataset_index_hash(profile, test_set)
            for label, umci in models.items():
                extra = {
                    "train": direction.train,
                    "model": label,
                    "epochs": result.epochs if label == "trained" else 0,
                    "umci_run": result.run_dir.name,
                    **provenance_columns(profile, dataset_index_hash=index_key),
                }
                per_class = rough_map_metrics(profile, umci, test_set, extra_columns=extra)
                frames.append(pd.concat([per_class, macro_mean(per_class)], ignore_index=True))
    return pd.concat(frames, ignore_index=True)


# -- figures ----------------------------------------------------------------------------------
def plot_loss_curves(
    profile: ProfileConfig, runs: dict[str, pd.DataFrame], name: str = "umci_loss_curves"
) -> Path:
    """Seaborn line plot of per-step training loss, one line per run -> figures/<name>.png."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    import seaborn as sns

    frames = []
    for label, losses in runs.items():
        frame = losses.copy()
        frame["run"] = label
        frame["iteration"] = np.arange(len(frame))
        frames.append(frame)
    data = pd.concat(frames, ignore_index=True)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    sns.lineplot(data=data, x="iteration", y="loss", hue="run", ax=ax)
    ax.set(
        xlabel="training step",
        ylabel="focal + dice, summed over stages",
        title="UMCI training loss",
    )
    fig.tight_layout()
    out = paths.results_subdir(profile, "figures") / f"{name}.png"
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=150, format="png")
    plt.close(fig)
    return out


__all__ = [
    "TrainResult",
    "TrainingSet",
    "dice_loss",
    "eval_records",
    "extract_profile_features",
    "focal_loss",
    "init_umci",
    "load_umci",
    "plot_loss_curves",
    "prepare_training_set",
    "profile_records",
    "rough_map_comparison",
    "rough_map_metrics",
    "rough_maps",
    "run_dir",
    "run_key",
    "train_umci",
    "umci_loss",
]
