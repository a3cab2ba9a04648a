"""Each tapped CLIP stage read two ways: through the CLIP's own head, and through the
baseline's trained linear layer (the stage probe).

The APRIL-GAN baseline maps each tapped stage's tokens into the text space with a linear
layer trained on the auxiliary dataset (method.md section 2, step 0). The CLIP has a map of
its own into that space, trained together with its text encoder: ``ln_post`` then
``proj``, the path of its pooled token. Read through that head, a stage's tokens give a
zero-shot map with nothing trained. Both readings of every stage, on the same test images,
under the same protocol and with the same logits, upsampling and softmax (the baseline's
UMCI with its linear layers swapped for the head), say where a weak baseline loses: in the
CLIP (both readings low) or in the transfer of the trained layers from one dataset to
another (head high, trained layer low).

Pixel AUROC, AP and F1-max come from ``metrics`` (exact, per class, then the macro mean);
PRO is left out, as this table asks only how each reading ranks pixels. The trained
reading of all stages is the baseline's rough map at S x S; the module ablation evaluates
the same map after the round trip through the image's original size that stored maps
take, which moves it by under 0.1 point (smoke, an earlier mini CLIP: 76.50 vs 76.52, 86.53 vs
86.57).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from clipsam_lib import metrics
from clipsam_lib.evaluate import protocol_map, protocol_mask
from clipsam_lib.features import ClipFeatureStore
from clipsam_lib.modeling.umci import UMCI
from clipsam_lib.workspace import Workspace

HEAD = "CLIP head (zero-shot)"
TRAINED = "trained linear layer"
COMBINED = "all stages"  # the rough map: the stage maps combined as umci.stage_combination
METRIC_NAMES = ("auroc", "ap", "f1_max")


def clip_head(visual: nn.Module) -> nn.Module:
    """The CLIP's own map from residual-stream tokens to the text space: ``ln_post`` then
    ``proj``, as float32 copies on the CPU, where the cached tokens and the loaded UMCI are
    (the backbone may run in bf16, on a GPU)."""
    proj = visual.proj.detach().float().cpu()
    linear = nn.Linear(proj.shape[0], proj.shape[1], bias=False)
    linear.weight.data.copy_(proj.T)
    return nn.Sequential(copy.deepcopy(visual.ln_post).float().cpu(), linear).eval()


def head_reading(baseline: UMCI, visual: nn.Module) -> UMCI:
    """``baseline`` (UMCI off) with every stage's trained linear layer replaced by the CLIP's
    head: the same logits, upsampling and softmax, nothing trained."""
    if baseline.interact is not None:
        raise ValueError("The stage probe reads the CLIP baseline: pass a UMCI trained with "
                         "umci.enabled: false.")
    probe = copy.deepcopy(baseline)
    head = clip_head(visual)
    probe.project = nn.ModuleList(head for _ in baseline.project)
    return probe.eval()


def _stage_labels(profile) -> list[str]:
    return [f"block {s}" for s in profile.clip.stages] + [COMBINED]


def _maps(model: UMCI, tokens: list[torch.Tensor], text: torch.Tensor, size: int
          ) -> list[np.ndarray]:
    """Anomalous channel of each stage's map, then the rough map (all S x S)."""
    with torch.no_grad():
        out = model([t[None].float() for t in tokens], text[None], size)
    maps = [m[0, 1] for m in out.stage_maps] + [out.rough_map[0]]
    return [m.numpy().astype(np.float32) for m in maps]


def probe_rows(ws: Workspace, run: Any) -> list[dict[str, Any]]:
    """One row per (reading, stage) for one ``ablations.VariantRun`` of the CLIP baseline:
    the macro mean over classes of each reading's pixel metrics on the run's test set."""
    from clipsam_lib.train import load_umci

    profile = run.profile
    trained = load_umci(run.checkpoint)
    models = {HEAD: head_reading(trained, ws.clip.get().model.visual), TRAINED: trained}
    store = ClipFeatureStore(profile)
    names = sorted({rec["cls_name"] for rec in run.records})
    text_of = dict(zip(names, store.text(names)))
    root = ws.dataset(run.test_dataset).root
    side, cfg = profile.clip.image_size, profile.eval
    labels = _stage_labels(profile)
    per_class: dict[tuple[str, str], list[dict[str, float]]] = {}
    # One class at a time, each image's tokens read once for both readings: a class's
    # 2 x (stages + 1) maps per image are held at the protocol's size (peer: S x S).
    for cls in names:
        records = [rec for rec in run.records if rec["cls_name"] == cls]
        masks = [protocol_mask(rec, root, cfg, side) for rec in records]
        maps: dict[str, list[list[np.ndarray]]] = {reading: [] for reading in models}
        for rec in records:
            tokens = store.tokens(run.test_dataset, rec)
            for reading, model in models.items():
                stage_maps = _maps(model, tokens, text_of[cls], side)
                maps[reading].append([protocol_map(rec, lambda _, m=m: m, cfg, side)
                                      for m in stage_maps])
        for reading, per_image in maps.items():
            for k, label in enumerate(labels):
                scores = metrics.segmentation_metrics(
                    masks, [image[k] for image in per_image], pro_variant=None)
                per_class.setdefault((reading, label), []).append(scores)
    return [{"reading": reading, "stage": label, **_macro_mean(scores)}
            for (reading, label), scores in per_class.items()]


def _macro_mean(scores: list[dict[str, float]]) -> dict[str, Any]:
    """The mean over the classes whose metrics are defined, and a note naming the others."""
    defined = [s for s in scores if not np.isnan(s["auroc"])]
    left_out = len(scores) - len(defined)
    note = (f"{left_out} of {len(scores)} classes have no anomalous or no normal pixel: "
            "left out of the mean") if left_out else ""
    means = {f"pixel_{m}": float(np.mean([s[m] for s in defined])) if defined else float("nan")
             for m in METRIC_NAMES}
    return {"n_classes": len(defined), **means, "note": note}


def probe_table(ws: Workspace, runs: Sequence[Any]) -> pd.DataFrame:
    """``probe_rows`` of every baseline run, with the run's direction and provenance."""
    from clipsam_lib.provenance import provenance_columns

    rows = []
    for run in runs:
        provenance = provenance_columns(run.profile, protocol=run.profile.eval.protocol,
                                        dataset_index_hash=run.index_hash,
                                        config_hash=run.profile.hash())
        rows += [{"train": run.train_dataset, "dataset": run.test_dataset,
                  "seed": run.profile.train.seed, **row, **provenance}
                 for row in probe_rows(ws, run)]
    return pd.DataFrame(rows)


def write_probe_table(ws: Workspace, runs: Sequence[Any], name: str = "clip_stage_probe"
                      ) -> pd.DataFrame:
    """``probe_table`` as ``results/<profile>/tables/<name>``: the CSV long (every metric,
    fractions, provenance), Markdown/LaTeX one row per reading with each stage's P-AUROC."""
    from clipsam_lib import paths
    from clipsam_lib.tables import write_table

    table = probe_table(ws, runs)
    # Several seeds (train.seeds): the rendering shows their mean.
    wide = table.pivot_table(index=["train", "dataset", "reading"], columns="stage",
                             values="pixel_auroc", sort=False)
    wide = (100.0 * wide[_stage_labels(ws.profile)]).reset_index()
    wide.columns = [*wide.columns[:3], *[f"{c} P-AUROC (%)" for c in wide.columns[3:]]]
    caption = (f"Each tapped CLIP stage read through the CLIP's own head (zero-shot) and "
               f"through the CLIP baseline's trained linear layer, same test images and "
               f"protocol (profile {ws.profile.name}; pixel AUROC, macro mean over classes)")
    write_table(table, paths.results_subdir(ws.profile, "tables") / name, caption=caption,
                rendered=wide)
    return table
