"""UMCI: Unified Multi-scale Cross-modal Interaction (method.md section 2).

Per tapped CLIP stage i, with X = Linear_i(V_i) the patch tokens in text space (D) on a
g x g grid and L = [L_normal, L_anomalous] the class's text features:

- Strip path (row/column level, attention twice; the author's description):
  X_row = pool over width, X_col = pool over height (mean or max);
  L_row = Attn(L, X_row, X_row), L_col = Attn(L, X_col, X_col)      (text queries)
  Z_row = Attn(X_row, L_row, L_row), Z_col = Attn(X_col, L_col, L_col)   (visual queries)
  S[h, w] = Z_row[h] + Z_col[w].
- Scale path (two kernels, fused first): P = sum_k upsample(Attn(AvgPool_k(X), L, L)).
- Fusion: F = X + S + P (residual switch; optional LayerNorm before the paths or after the
  sum), per-patch logits = logit_scale * cos(F, L_c), bilinear upsampling to S x S
  (``align_corners`` switch; APRIL-GAN: True), softmax over {normal, anomalous} -> M_i.
- Rough map: mean over stages of M_i[anomalous] (in [0, 1]), or the peer's sum.

``enabled=False`` is the APRIL-GAN linear-projection baseline (F = X). Every choice the
paper leaves open is a UMCIConfig field; the rows and columns have their own attention
weights, as do the two scales and the stages.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from clipsam_lib.config import UMCIConfig


@dataclass
class UMCIOutput:
    """Per-stage logits on the patch grid, per-stage maps and the rough map at S x S."""

    stage_logits: list[torch.Tensor]  # [B, 2, g, g]
    stage_maps: list[torch.Tensor]  # [B, 2, S, S], softmax over the two classes
    rough_map: torch.Tensor  # [B, S, S]: mean (in [0, 1]) or sum over stages


class CrossAttention(nn.Module):
    """Multi-head scaled dot-product attention, projected into ``hidden`` and back to ``dim``."""

    def __init__(self, dim: int, hidden: int, heads: int):
        super().__init__()
        if hidden % heads:
            raise ValueError(f"umci.hidden_dim {hidden} must be divisible by umci.heads {heads}.")
        self.heads = heads
        self.q = nn.Linear(dim, hidden)
        self.k = nn.Linear(dim, hidden)
        self.v = nn.Linear(dim, hidden)
        self.out = nn.Linear(hidden, dim)

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        """``[B, Nq, dim]`` queries attend over ``[B, Nk, dim]`` keys/values -> ``[B, Nq, dim]``."""
        q, k, v = (
            self._split(proj(x)) for proj, x in ((self.q, query), (self.k, key), (self.v, value))
        )
        mixed = F.scaled_dot_product_attention(q, k, v)  # [B, heads, Nq, hidden/heads]
        return self.out(mixed.transpose(1, 2).flatten(2))

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        b, n, hidden = x.shape
        return x.view(b, n, self.heads, hidden // self.heads).transpose(1, 2)


class StripPath(nn.Module):
    """Row/column interaction: text reads the strips, then the strips read that text."""

    def __init__(self, dim: int, hidden: int, heads: int, pooling: str):
        super().__init__()
        if pooling not in ("mean", "max"):
            raise ValueError(f"umci.pooling must be 'mean' or 'max', not {pooling!r}.")
        self.pooling = pooling
        self.text_from_rows = CrossAttention(dim, hidden, heads)
        self.text_from_cols = CrossAttention(dim, hidden, heads)
        self.rows_from_text = CrossAttention(dim, hidden, heads)
        self.cols_from_text = CrossAttention(dim, hidden, heads)

    def forward(self, grid: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """``grid [B, H, W, D]``, ``text [B, 2, D]`` -> ``S [B, H, W, D]``."""
        rows = self._pool(grid, dim=2)  # [B, H, D]: one token per row
        cols = self._pool(grid, dim=1)  # [B, W, D]: one token per column
        text_rows = self.text_from_rows(text, rows, rows)
        text_cols = self.text_from_cols(text, cols, cols)
        z_rows = self.rows_from_text(rows, text_rows, text_rows)
        z_cols = self.cols_from_text(cols, text_cols, text_cols)
        return z_rows[:, :, None, :] + z_cols[:, None, :, :]

    def _pool(self, grid: torch.Tensor, dim: int) -> torch.Tensor:
        return grid.mean(dim) if self.pooling == "mean" else grid.amax(dim)


class ScalePath(nn.Module):
    """Two-scale interaction: pooled patches read the text; scales summed on the full grid."""

    def __init__(self, dim: int, hidden: int, heads: int, kernels: tuple[int, ...]):
        super().__init__()
        self.kernels = tuple(int(k) for k in kernels)
        self.attn = nn.ModuleList(CrossAttention(dim, hidden, heads) for _ in self.kernels)

    def forward(self, grid: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """``grid [B, H, W, D]``, ``text [B, 2, D]`` -> ``P [B, H, W, D]``."""
        b, h, w, d = grid.shape
        channels_first = grid.permute(0, 3, 1, 2)
        fused = torch.zeros_like(channels_first)
        for kernel, attn in zip(self.kernels, self.attn):
            # ceil_mode: the last partial window still covers the border patches.
            pooled = F.avg_pool2d(channels_first, kernel, stride=kernel, ceil_mode=True)
            hk, wk = pooled.shape[-2:]
            tokens = pooled.flatten(2).transpose(1, 2)  # [B, hk*wk, D]
            read = attn(tokens, text, text).transpose(1, 2).reshape(b, d, hk, wk)
            fused = fused + F.interpolate(read, size=(h, w), mode="bilinear", align_corners=False)
        return fused.permute(0, 2, 3, 1)


class StageInteraction(nn.Module):
    """One stage's UMCI: the strip and scale paths fused with the projected tokens."""

    def __init__(self, cfg: UMCIConfig, dim: int):
        super().__init__()
        if cfg.norm not in ("none", "pre", "post"):
            raise ValueError(f"umci.norm must be 'none', 'pre' or 'post', not {cfg.norm!r}.")
        if not (cfg.strip_path or cfg.scale_path or cfg.residual):
            raise ValueError("UMCI with no strip path, no scale path and no residual has no input.")
        self.residual = cfg.residual
        self.norm_mode = cfg.norm
        self.norm = nn.LayerNorm(dim) if cfg.norm != "none" else nn.Identity()
        self.strip = (
            StripPath(dim, cfg.hidden_dim, cfg.heads, cfg.pooling) if cfg.strip_path else None
        )
        self.scale = (
            ScalePath(dim, cfg.hidden_dim, cfg.heads, cfg.kernels) if cfg.scale_path else None
        )

    def forward(self, grid: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """``X [B, H, W, D]`` -> ``F [B, H, W, D]``."""
        paths_in = self.norm(grid) if self.norm_mode == "pre" else grid
        fused = grid if self.residual else torch.zeros_like(grid)
        if self.strip is not None:
            fused = fused + self.strip(paths_in, text)
        if self.scale is not None:
            fused = fused + self.scale(paths_in, text)
        return self.norm(fused) if self.norm_mode == "post" else fused


def upsample_logits(logits: torch.Tensor, size: tuple[int, int], align_corners: bool) -> torch.Tensor:
    """Bilinear upsampling of ``[B, 2, g, g]`` stage logits to ``size``, before the softmax.

    ``align_corners=True`` (APRIL-GAN) puts the corner cells' centres on the image corners;
    False uses half-pixel centres. Maps and the training loss both call this, so a model is
    trained under the convention it is evaluated with (``umci.align_corners``).
    """
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=align_corners)


class UMCI(nn.Module):
    """All stages: projection (1024 -> 768 for ViT-L), interaction, cosine logits, maps."""

    def __init__(self, cfg: UMCIConfig, clip_width: int, text_dim: int, n_stages: int):
        super().__init__()
        if cfg.stage_combination not in ("mean", "sum"):
            raise ValueError(
                f"umci.stage_combination must be 'mean' or 'sum', not {cfg.stage_combination!r}."
            )
        self.cfg = cfg
        self.text_dim = text_dim
        self.project = nn.ModuleList(nn.Linear(clip_width, text_dim) for _ in range(n_stages))
        self.interact = (
            nn.ModuleList(StageInteraction(cfg, text_dim) for _ in range(n_stages))
            if cfg.enabled
            else None
        )

    def forward(
        self, stage_tokens: list[torch.Tensor], text: torch.Tensor, out_size: int | None = None
    ) -> UMCIOutput:
        """``stage_tokens``: per stage ``[B, g*g, C]``; ``text [B, 2, D]`` (each image's class).

        ``out_size`` is the side S of the returned maps (None: the patch grid g).
        """
        if len(stage_tokens) != len(self.project):
            raise ValueError(
                f"UMCI was built for {len(self.project)} stages, got {len(stage_tokens)}."
            )
        text = F.normalize(text.float(), dim=-1)
        logits, maps = [], []
        for i, tokens in enumerate(stage_tokens):
            stage_logits = self._stage_logits(i, tokens.float(), text)
            logits.append(stage_logits)
            size = out_size or stage_logits.shape[-1]
            upsampled = upsample_logits(stage_logits, (size, size), self.cfg.align_corners)
            maps.append(upsampled.softmax(dim=1))
        anomalous = torch.stack([m[:, 1] for m in maps])
        rough = anomalous.mean(0) if self.cfg.stage_combination == "mean" else anomalous.sum(0)
        return UMCIOutput(stage_logits=logits, stage_maps=maps, rough_map=rough)

    def _stage_logits(self, i: int, tokens: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        b, n, _ = tokens.shape
        g = math.isqrt(n)
        if g * g != n:
            raise ValueError(f"Stage {i} has {n} tokens, not a square grid (class token dropped?).")
        grid = self.project[i](tokens).view(b, g, g, self.text_dim)
        if self.interact is not None:
            grid = self.interact[i](grid, text)
        cosine = torch.einsum("bhwd,bcd->bchw", F.normalize(grid, dim=-1), text)
        return self.cfg.logit_scale * cosine


def build_umci(cfg: UMCIConfig, clip_width: int, embed_dim: int, n_stages: int) -> UMCI:
    """UMCI for a CLIP with ``clip_width``-d tokens and ``embed_dim``-d text features."""
    text_dim = cfg.text_dim or embed_dim
    if text_dim != embed_dim:
        raise ValueError(
            f"umci.text_dim {text_dim} differs from the CLIP text embedding {embed_dim}; "
            "leave it None."
        )
    return UMCI(cfg, clip_width, text_dim, n_stages)
