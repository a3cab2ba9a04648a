"""SAM's image-encoder attention through ``scaled_dot_product_attention`` (a build-time swap).

segment-anything's ``Attention`` computes ``softmax(q k^T * scale + rel_h + rel_w) v`` as
separate operations: the score matrix, two relative-position einsums added into a 5-D
view of it, a softmax and a second matmul. The same value, following "Segment Anything,
Fast" (pytorch-labs), is one fused ``F.scaled_dot_product_attention`` with the decomposed
relative-position terms as its additive mask. ``SdpaAttention`` holds the library
module's own parameters (``qkv``, ``proj``, ``rel_pos_h``, ``rel_pos_w``: the same
tensors, not copies), so a checkpoint loads unchanged (before or after the swap);
segment-anything itself is neither patched nor vendored: ``swap_attention`` replaces the
``attn`` attribute of each block of one built model, and only when ``sam.attention`` is
``sdpa``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from segment_anything.modeling.image_encoder import Attention, get_rel_pos
from torch import nn

ATTENTIONS = ("library", "sdpa")


class SdpaAttention(nn.Module):
    """The library ``Attention``'s computation, fused; wraps (shares) its parameters."""

    def __init__(self, library: Attention):
        super().__init__()
        self.num_heads = library.num_heads
        self.scale = library.scale
        self.qkv = library.qkv
        self.proj = library.proj
        self.use_rel_pos = library.use_rel_pos
        if self.use_rel_pos:
            self.rel_pos_h = library.rel_pos_h
            self.rel_pos_w = library.rel_pos_w

    def relative_bias(self, q: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """``[B*heads, H*W, H*W]``: rel_h[q, k_h] + rel_w[q, k_w], as add_decomposed_rel_pos."""
        height, width = size
        rh = get_rel_pos(height, height, self.rel_pos_h)
        rw = get_rel_pos(width, width, self.rel_pos_w)
        r_q = q.reshape(q.shape[0], height, width, -1)
        rel_h = torch.einsum("bhwc,hkc->bhwk", r_q, rh)
        rel_w = torch.einsum("bhwc,wkc->bhwk", r_q, rw)
        bias = rel_h[:, :, :, :, None] + rel_w[:, :, :, None, :]
        return bias.reshape(q.shape[0], height * width, height * width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, height, width, _ = x.shape
        qkv = self.qkv(x).reshape(batch, height * width, 3, self.num_heads, -1)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each [B, heads, H*W, C]
        mask = None
        if self.use_rel_pos:
            flat_q = q.reshape(batch * self.num_heads, height * width, -1)
            mask = self.relative_bias(flat_q, (height, width)).view(
                batch, self.num_heads, height * width, height * width).to(q.dtype)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.scale)
        out = out.view(batch, self.num_heads, height, width, -1).permute(0, 2, 3, 1, 4)
        return self.proj(out.reshape(batch, height, width, -1))


def swap_attention(image_encoder: nn.Module, attention: str) -> nn.Module:
    """``sdpa``: put ``SdpaAttention`` into every block of a built image encoder;
    ``library``: leave segment-anything's own modules."""
    if attention not in ATTENTIONS:
        raise ValueError(f"sam.attention must be one of {ATTENTIONS}, not {attention!r}.")
    if attention == "sdpa":
        for block in image_encoder.blocks:
            if isinstance(block.attn, Attention):
                block.attn = SdpaAttention(block.attn)
    return image_encoder
