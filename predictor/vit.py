"""A plain ViT-B/16 forward pass, just what DreamSim's features need.

The architecture is DINO's ``vision_transformer.py`` (Caron et al. 2021) as vendored by
dreamsim 0.2.1 (``dreamsim/feature_extraction/vision_transformer.py``), with the two
changes ``load_clip_as_dino.py`` / ``load_open_clip_as_dino.py`` make for CLIP backbones
(``pos_drop`` replaced by a LayerNorm ``ln_pre``, QuickGELU for OpenAI CLIP, eps 1e-5).
Parameter names follow the upstream checkpoints so their state dicts load unchanged
(except ``pos_drop.*``, stored here as ``ln_pre.*``).

Differences from upstream, none of which changes the result beyond float rounding:
attention through ``F.scaled_dot_product_attention`` (flash / memory-efficient kernels
where available), no forward hooks, and the last block computes only the CLS token,
which is all DreamSim reads.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class QuickGELU(nn.Module):
    """OpenAI CLIP's activation: x * sigmoid(1.702 x)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, *, quick_gelu: bool) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act: nn.Module = QuickGELU() if quick_gelu else nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        assert dim % num_heads == 0, "dim should be divisible by num_heads"
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, *, cls_only: bool = False) -> torch.Tensor:
        """Self-attention; with ``cls_only`` only the first token's output is computed."""
        b, n, d = x.shape
        h = self.num_heads
        if cls_only:
            # Queries for the CLS token only; keys/values for every token.
            q = F.linear(x[:, :1], self.qkv.weight[:d], self.qkv.bias[:d])
            kv = F.linear(x, self.qkv.weight[d:], self.qkv.bias[d:])
            q = q.view(b, 1, h, d // h).transpose(1, 2)
            k, v = kv.view(b, n, 2, h, d // h).permute(2, 0, 3, 1, 4).unbind(0)
        else:
            qkv = self.qkv(x).view(b, n, 3, h, d // h).permute(2, 0, 3, 1, 4)
            q, k, v = qkv.unbind(0)
        out = F.scaled_dot_product_attention(q, k, v)  # scale = head_dim ** -0.5, as upstream
        out = out.transpose(1, 2).reshape(b, q.shape[2], d)
        return self.proj(out)


class Block(nn.Module):
    def __init__(self, dim: int, num_heads: int, *, eps: float, quick_gelu: bool) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, dim * 4, quick_gelu=quick_gelu)

    def forward(self, x: torch.Tensor, *, cls_only: bool = False) -> torch.Tensor:
        y = self.attn(self.norm1(x), cls_only=cls_only)
        x = (x[:, :1] if cls_only else x) + y
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    """Non-overlapping patches to tokens (named as upstream: ``patch_embed.proj``)."""

    def __init__(self, dim: int, patch_size: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class ViT(nn.Module):
    """ViT-B/16 at 224 px returning one DreamSim feature per image.

    Args:
        kind: ``"dino"``: the CLS token output of the last block, before the final norm
            (upstream ``feat_type="cls"``). ``"clip"``: ``ln_pre`` after the position
            embedding, final norm on the CLS token, then ``@ proj`` (``feat_type="embedding"``).
        eps: LayerNorm epsilon (1e-6 DINO, 1e-5 CLIP/OpenCLIP).
        quick_gelu: use QuickGELU (OpenAI CLIP) instead of exact GELU.
        proj_dim: output size of ``proj`` (CLIP only).
        mean: per-channel mean of the input normalisation.
        std: per-channel std of the input normalisation.
    """

    def __init__(
        self,
        *,
        kind: str,
        eps: float,
        quick_gelu: bool,
        mean: tuple[float, float, float],
        std: tuple[float, float, float],
        proj_dim: int | None = None,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        patch_size: int = 16,
        img_size: int = 224,
    ) -> None:
        super().__init__()
        assert kind in ("dino", "clip"), f"unknown backbone kind {kind!r}"
        assert (kind == "clip") == (proj_dim is not None), "proj_dim is for CLIP backbones only"
        self.kind = kind
        self.img_size = img_size
        num_tokens = (img_size // patch_size) ** 2 + 1
        self.patch_embed = PatchEmbed(embed_dim, patch_size)
        self.cls_token = nn.Parameter(torch.empty(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.empty(1, num_tokens, embed_dim))
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, eps=eps, quick_gelu=quick_gelu) for _ in range(depth)
        )
        self.ln_pre: nn.LayerNorm | None = None
        self.norm: nn.LayerNorm | None = None
        self.proj: nn.Parameter | None = None
        if kind == "clip":
            self.ln_pre = nn.LayerNorm(embed_dim, eps=eps)
            self.norm = nn.LayerNorm(embed_dim, eps=eps)
            self.proj = nn.Parameter(torch.empty(embed_dim, proj_dim))  # type: ignore[arg-type]
        # The normalisation is part of the model (upstream applies it inside PerceptualModel).
        self.mean: torch.Tensor
        self.std: torch.Tensor
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 [B, 3, H, W] -> the float input upstream computes (ToTensor, Normalize), fp32."""
        x = images.to(torch.float32).div(255)
        return (x - self.mean) / self.std

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 images [B, 3, 224, 224] -> features [B, 768 (dino) | proj_dim (clip)]."""
        assert images.shape[-2:] == (self.img_size, self.img_size), (
            f"expected {self.img_size}x{self.img_size} images, got {tuple(images.shape)}"
        )
        dtype = self.cls_token.dtype
        x = self.patch_embed(self.normalize(images).to(dtype))
        x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1)
        x = x + self.pos_embed
        if self.ln_pre is not None:
            x = self.ln_pre(x)
        last = len(self.blocks) - 1
        for i, blk in enumerate(self.blocks):
            x = blk(x, cls_only=i == last)
        cls = x[:, 0]
        if self.kind == "dino":
            return cls
        assert self.norm is not None and self.proj is not None
        return self.norm(cls) @ self.proj
