"""The training loop both mini recipes share: seeded, resumable, with a progress bar.

Every step's data is a pure function of (seed, step), so a resumed run needs only the
model and optimiser state to continue exactly where it stopped; the state is written
atomically every ``checkpoint_every`` steps into the work folder, named by the recipe
hash (a changed recipe never resumes from another recipe's state).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from safetensors.torch import save_file
from tqdm.auto import tqdm

from clipsam_lib.mini.recipes import recipe_blob, recipe_hash


def cosine_lr(step: int, steps: int, warmup: int, peak: float) -> float:
    """Linear warm-up to ``peak``, then cosine decay to 0 at ``steps``."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return peak * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on matrices only (open_clip's and SAM's convention): not on gains,
    biases, embeddings of positions or the logit scale."""
    decay, keep = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        no_decay = param.ndim < 2 or "pos" in name or "logit_scale" in name or "token" in name
        (keep if no_decay else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": keep, "weight_decay": 0.0}]


@contextlib.contextmanager
def pinned_threads(threads: int) -> Iterator[None]:
    """CPU float sums depend on the thread count: the recipe fixes it while it trains."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def run_steps(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    step_fn: Callable[[int], dict[str, float]],
    *,
    recipe,
    work_folder: Path,
    steps: int,
    resume: bool,
    progress: bool,
    desc: str,
) -> list[dict[str, float]]:
    """Run ``step_fn(step)`` for steps [start, steps), saving state on the way.

    Returns the log of every step run so far (read back from the state when resuming).
    """
    # The schedule depends on the number of steps: a shorter run never resumes a longer one.
    state_path = work_folder / f"{desc}-{recipe_hash(recipe)}-{steps}steps.state.pt"
    log: list[dict[str, float]] = []
    start = 0
    if resume and state_path.is_file():
        state = torch.load(state_path, weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start, log = int(state["step"]), json.loads(state["log"])
    bar = tqdm(range(start, steps), desc=desc, initial=start, total=steps, disable=not progress)
    for step in bar:
        for group in optimizer.param_groups:
            group["lr"] = cosine_lr(step, steps, recipe.warmup_steps, recipe.lr)
        entry = {"step": step, **step_fn(step)}
        log.append(entry)
        bar.set_postfix(loss=f"{entry['loss']:.4f}")
        if (step + 1) % recipe.checkpoint_every == 0 or step + 1 == steps:
            _save_state(state_path, model, optimizer, step + 1, log)
    return log


def _save_state(path: Path, model, optimizer, step: int, log: list) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_suffix(".tmp")
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "step": step, "log": json.dumps(log)}, staging)
    os.replace(staging, path)


def _stored_dtype(name: str) -> torch.dtype:
    return torch.float32 if "positional_embedding" in name else torch.float16


def save_weights(model: torch.nn.Module, path: Path, recipe, log: list[dict]) -> Path:
    """The weights as fp16 safetensors, with the recipe and its hash in the metadata.

    Positional embeddings are rounded to fp16 like the rest but stored as fp32: open_clip
    resizes them (bicubic) when the model runs at another image size, and CPU torch has
    no fp16 bicubic.
    """
    tensors = {name: value.detach().to(torch.float16).to(_stored_dtype(name)).contiguous()
               for name, value in model.state_dict().items() if value.is_floating_point()}
    tensors.update({name: value.contiguous() for name, value in model.state_dict().items()
                    if not value.is_floating_point()})
    tail = log[-20:]
    metadata = {
        "recipe_hash": recipe_hash(recipe),
        "recipe": json.dumps(recipe_blob(recipe), sort_keys=True),
        "steps": str(len(log)),
        "final_loss": f"{sum(e['loss'] for e in tail) / max(1, len(tail)):.5f}",
        "stored_dtype": "float16 (positional embeddings float32)",
        "trained_on": "clipsam mini corpus (synthetic, no benchmark picture, name or mask)",
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(path.name + ".tmp")
    save_file(tensors, str(staging), metadata=metadata)
    os.chmod(staging, 0o644)  # a data file like any other (safetensors writes it 0600)
    os.replace(staging, path)
    return path
