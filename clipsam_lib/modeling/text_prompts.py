"""The text side of the rough map: a prompt ensemble per class (method.md section 1).

Each class gets two groups of sentences, normal and anomalous: every *state* (e.g.
``"flawless {}"``) is put into each of the 35 standard CLIP ImageNet-style *templates*
(e.g. ``"a bad photo of a {}."``). The backbone encodes every sentence, L2-normalises it,
averages per group and re-normalises (``ClipBackbone.text_features``). These are the
APRIL-GAN (peer) lists, which ClipSAM builds on.
"""

from __future__ import annotations

from collections.abc import Mapping

NORMAL_STATES: tuple[str, ...] = (
    "{}",
    "flawless {}",
    "perfect {}",
    "unblemished {}",
    "{} without flaw",
    "{} without defect",
    "{} without damage",
)

ANOMALOUS_STATES: tuple[str, ...] = (
    "damaged {}",
    "broken {}",
    "{} with flaw",
    "{} with defect",
    "{} with damage",
)

TEMPLATES: tuple[str, ...] = (
    "a bad photo of a {}.",
    "a low resolution photo of the {}.",
    "a bad photo of the {}.",
    "a cropped photo of the {}.",
    "a bright photo of a {}.",
    "a dark photo of the {}.",
    "a photo of my {}.",
    "a photo of the cool {}.",
    "a close-up photo of a {}.",
    "a black and white photo of the {}.",
    "a bright photo of the {}.",
    "a cropped photo of a {}.",
    "a jpeg corrupted photo of a {}.",
    "a blurry photo of the {}.",
    "a photo of the {}.",
    "a good photo of the {}.",
    "a photo of one {}.",
    "a close-up photo of the {}.",
    "a photo of a {}.",
    "a low resolution photo of a {}.",
    "a photo of a large {}.",
    "a blurry photo of a {}.",
    "a jpeg corrupted photo of the {}.",
    "a good photo of a {}.",
    "a photo of the small {}.",
    "a photo of the large {}.",
    "a black and white photo of a {}.",
    "a dark photo of a {}.",
    "a photo of a cool {}.",
    "a photo of a small {}.",
    "there is a {} in the scene.",
    "there is the {} in the scene.",
    "this is a {} in the scene.",
    "this is the {} in the scene.",
    "this is one {} in the scene.",
)

# Bump when the lists above change: it is part of the text-feature cache key.
PROMPT_VERSION = "april-gan-7x5x35-v1"


def display_name(
    class_name: str, keep_underscore: bool = False, aliases: Mapping[str, str] | None = None
) -> str:
    """The class name as it appears in the sentences.

    ``aliases`` rename a class first (``mtd`` -> ``magnetic tile``). Dataset folders use
    underscores (``metal_nut``); by default they become spaces (``metal nut``). The peer
    keeps the underscore: ``keep_underscore=True``.
    """
    name = (aliases or {}).get(class_name, class_name)
    return name if keep_underscore else name.replace("_", " ")


def state_sentences(name: str) -> tuple[list[str], list[str]]:
    """(normal sentences, anomalous sentences) for an already displayed class name."""
    return _fill(NORMAL_STATES, name), _fill(ANOMALOUS_STATES, name)


def _fill(states: tuple[str, ...], name: str) -> list[str]:
    return [template.format(state.format(name)) for state in states for template in TEMPLATES]
