"""CLIP's self-attention head by head with plain matrix products (a build-time swap).

open_clip's blocks run ``nn.MultiheadAttention``, whose no-weights path is PyTorch's fused
``scaled_dot_product_attention``. On a CPU in bf16 that kernel computes in fp32: measured
on a 2-core AVX512-BF16 machine at ViT-L-14-336's shape (1,370 tokens, 16 heads of 64),
it runs at 180 GFLOP/s in bf16 as in fp32, and took 43 % of the encoder's time for 18 %
of its FLOPs. One head at a time, ``softmax(q k^T * scale) v`` as two bf16 matrix
products (the 1,370 x 1,370 score matrix of one head stays in cache) ran at 370-420
GFLOP/s. In fp32, and for SAM's 4,096-token global attention, the fused kernel is the
faster one. So ``HeadwiseAttention`` loops over heads on the CPU only (elsewhere it calls
the fused kernel on the same tensors), and ``clip.attention: auto`` swaps it in for bf16.

``HeadwiseAttention`` holds the library module's own parameters (the same tensors, under
the same state-dict names), so weights load unchanged before or after the swap, and
open_clip is neither patched nor vendored: ``swap_attention`` replaces the ``attn``
attribute of each block of one built image tower.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

ATTENTIONS = ("auto", "library", "headwise")


def resolve_attention(attention: str, dtype: str) -> str:
    """``auto`` -> ``headwise`` in bf16 (measured faster on the CPU), else ``library``.

    A function of the config alone, so cache keys never depend on the machine that asks.
    """
    if attention not in ATTENTIONS:
        raise ValueError(f"clip.attention must be one of {ATTENTIONS}, not {attention!r}.")
    if attention != "auto":
        return attention
    return "headwise" if dtype == "bf16" else "library"


class HeadwiseAttention(nn.Module):
    """``nn.MultiheadAttention``'s self-attention, one head at a time; shares its weights."""

    def __init__(self, library: nn.MultiheadAttention):
        super().__init__()
        if not library._qkv_same_embed_dim or library.bias_k is not None:
            raise ValueError("HeadwiseAttention needs a packed in-projection without "
                             "bias_k/bias_v, as open_clip's vision blocks have.")
        self.num_heads = library.num_heads
        self.batch_first = library.batch_first
        self.in_proj_weight = library.in_proj_weight
        self.in_proj_bias = library.in_proj_bias
        self.out_proj = library.out_proj

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                need_weights: bool = False, attn_mask: torch.Tensor | None = None):
        if need_weights or not (query is key is value):
            raise ValueError("HeadwiseAttention computes self-attention without weights "
                             "only (open_clip's vision blocks); use clip.attention: library.")
        x = query if self.batch_first else query.transpose(0, 1)  # [N, L, E]
        batch, tokens, width = x.shape
        head_dim = width // self.num_heads
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)
        q, k, v = qkv.view(batch, tokens, 3, self.num_heads, head_dim).permute(2, 0, 3, 1, 4)
        if x.device.type != "cpu":  # the fused kernel is the fast one there
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        else:
            out = self._head_by_head(q * head_dim ** -0.5, k, v, attn_mask)
        out = self.out_proj(out.permute(0, 2, 1, 3).reshape(batch, tokens, width))
        return (out if self.batch_first else out.transpose(0, 1)), None

    @staticmethod
    def _head_by_head(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                      attn_mask: torch.Tensor | None) -> torch.Tensor:
        """``[N, heads, L, d]`` each (q already scaled) -> the attention output, alike."""
        batch, heads = q.shape[:2]
        out = torch.empty_like(q)
        for b in range(batch):
            for h in range(heads):
                scores = q[b, h] @ k[b, h].transpose(0, 1)
                if attn_mask is not None:
                    scores = scores + attn_mask
                out[b, h] = torch.softmax(scores, dim=-1) @ v[b, h]
        return out


def swap_attention(visual: nn.Module, attention: str) -> nn.Module:
    """``headwise``: put ``HeadwiseAttention`` into every block of a built image tower;
    ``library``: leave open_clip's own modules."""
    if attention not in ("library", "headwise"):
        raise ValueError(f"clip.attention {attention!r} must be resolved (resolve_attention) "
                         "to 'library' or 'headwise' before the swap.")
    if attention == "headwise":
        for block in visual.transformer.resblocks:
            if isinstance(block.attn, nn.MultiheadAttention):
                block.attn = HeadwiseAttention(block.attn)
    return visual
