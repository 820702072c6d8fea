"""A plain ViT-B forward pass, just what DreamSim's features need.

The architecture is DINO's ``vision_transformer.py`` (Caron et al. 2021) as vendored by
dreamsim 0.2.1 (``dreamsim/feature_extraction/vision_transformer.py``), with what the
other backbones change:

- CLIP / OpenCLIP (``load_clip_as_dino.py``, ``load_open_clip_as_dino.py``): ``pos_drop``
  replaced by a LayerNorm (``ln_pre`` here), QuickGELU for OpenAI CLIP, eps 1e-5, a
  ``proj`` matrix after the final norm; patch 16 or 32.
- DINOv2 (``dinov2.models.vision_transformer``, torch.hub's ``dinov2_vitb14``): patch 14,
  layer scale on both residual branches (``ls1.gamma``, ``ls2.gamma``), and a position
  embedding trained at 518 px that upstream resizes on every call; here it is resized once
  at load time by ``resize_pos_embed`` with the same call.

Parameter names follow the upstream checkpoints so their state dicts load unchanged
(except ``pos_drop.*``, stored here as ``ln_pre.*``).

Differences from upstream, none of which changes the result beyond float rounding:
attention through ``F.scaled_dot_product_attention`` (flash / memory-efficient kernels
where available), no forward hooks, where the feature is read from the CLS token only,
the last block computes only the CLS token, and the input normalisation is folded into
the patch embedding's (fp32) convolution at load time (``ViT.fold_input_normalization``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

FEATURES = ("cls", "embedding", "cls_patch")


class QuickGELU(nn.Module):
    """OpenAI CLIP's activation: x * sigmoid(1.702 x)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class LayerScale(nn.Module):
    """DINOv2's per-channel residual scale (named ``gamma`` as upstream)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


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
        return self.proj(merge_heads(out))


def merge_heads(out: torch.Tensor) -> torch.Tensor:
    """``[B, H, N, hd]`` -> ``[B, N, H * hd]``, a view, not a copy, for SDPA's outputs here.

    q, k and v are head-transposed views of one ``[B, N, 3, H, hd]`` projection, and the
    SDPA kernels (flash and memory-efficient on CUDA, flash and math on CPU) return their
    output in that same token-major layout (strides ``[N*H*hd, hd, H*hd, 1]``), so the
    transpose is contiguous and ``reshape`` moves no data (tests/predictor/test_gpu_path.py
    checks it). Another layout would be copied here, correctly.
    """
    b, h, n, hd = out.shape
    return out.transpose(1, 2).reshape(b, n, h * hd)


class Block(nn.Module):
    def __init__(self, dim: int, num_heads: int, *, eps: float, quick_gelu: bool,
                 layer_scale: bool) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, dim * 4, quick_gelu=quick_gelu)
        self.ls1: nn.Module = LayerScale(dim) if layer_scale else nn.Identity()
        self.ls2: nn.Module = LayerScale(dim) if layer_scale else nn.Identity()

    def forward(self, x: torch.Tensor, *, cls_only: bool = False) -> torch.Tensor:
        y = self.ls1(self.attn(self.norm1(x), cls_only=cls_only))
        x = (x[:, :1] if cls_only else x) + y
        return x + self.ls2(self.mlp(self.norm2(x)))


class PatchEmbed(nn.Module):
    """Non-overlapping patches to tokens (named as upstream: ``patch_embed.proj``)."""

    def __init__(self, dim: int, patch_size: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


def resize_pos_embed(pos_embed: torch.Tensor, grid: int) -> torch.Tensor:
    """A position embedding for a ``grid x grid`` patch grid, as DINOv2 computes it.

    Exactly ``DinoVisionTransformer.interpolate_pos_encoding`` (dinov2 0.0.1 / torch.hub):
    bicubic ``interpolate`` with ``scale_factor=(grid + 0.1) / M`` (not ``size=``, which
    samples at other positions), no antialias, in float32, the CLS position untouched. A
    stored grid equal to ``grid`` is returned as is (upstream's shortcut).

    Args:
        pos_embed: ``[1, 1 + M*M, D]`` as stored in the checkpoint.
        grid: patches per side of the input (16 for ViT-B/14 at 224 px).

    Returns:
        ``[1, 1 + grid*grid, D]`` in ``pos_embed``'s dtype.
    """
    n = pos_embed.shape[1] - 1
    m = int(math.sqrt(n))
    assert m * m == n, f"position embedding of {n} patches is not a square grid"
    if m == grid:
        return pos_embed
    dim = pos_embed.shape[-1]
    pos = pos_embed.float()
    patch = F.interpolate(
        pos[:, 1:].reshape(1, m, m, dim).permute(0, 3, 1, 2),
        scale_factor=((grid + 0.1) / m, (grid + 0.1) / m),
        mode="bicubic",
    )
    assert patch.shape[-2:] == (grid, grid), f"resized to {tuple(patch.shape)}, not {grid}"
    patch = patch.permute(0, 2, 3, 1).reshape(1, grid * grid, dim)
    return torch.cat((pos[:, :1], patch), dim=1).to(pos_embed.dtype)


class ViT(nn.Module):
    """ViT-B at 224 px returning one DreamSim feature per image.

    Args:
        feature: ``"cls"``: the CLS token output of the last block, before the final norm
            (upstream ``feat_type="cls"``). ``"embedding"``: ``ln_pre`` after the position
            embedding, final norm on the CLS token, then ``@ proj`` (``feat_type=
            "embedding"``). ``"cls_patch"``: every token of the last block, before the
            final norm (``feat_type="cls_patch"``).
        eps: LayerNorm epsilon (1e-6 DINO, DINOv2, SynCLR; 1e-5 CLIP/OpenCLIP).
        quick_gelu: use QuickGELU (OpenAI CLIP) instead of exact GELU.
        mean: per-channel mean of the input normalisation.
        std: per-channel std of the input normalisation.
        proj_dim: output size of ``proj`` (``embedding`` only).
        patch_size: 16, 32 or 14.
        layer_scale: DINOv2's ``ls1``/``ls2`` in every block.
    """

    def __init__(
        self,
        *,
        feature: str,
        eps: float,
        quick_gelu: bool,
        mean: tuple[float, float, float],
        std: tuple[float, float, float],
        proj_dim: int | None = None,
        patch_size: int = 16,
        layer_scale: bool = False,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        img_size: int = 224,
    ) -> None:
        super().__init__()
        assert feature in FEATURES, f"unknown feature {feature!r}"
        assert (feature == "embedding") == (proj_dim is not None), (
            "proj_dim is for the embedding feature (CLIP backbones) only")
        self.feature = feature
        self.img_size = img_size
        num_tokens = (img_size // patch_size) ** 2 + 1
        self.patch_embed = PatchEmbed(embed_dim, patch_size)
        self.cls_token = nn.Parameter(torch.empty(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.empty(1, num_tokens, embed_dim))
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, eps=eps, quick_gelu=quick_gelu, layer_scale=layer_scale)
            for _ in range(depth)
        )
        self.ln_pre: nn.LayerNorm | None = None
        self.norm: nn.LayerNorm | None = None
        self.proj: nn.Parameter | None = None
        if feature == "embedding":
            self.ln_pre = nn.LayerNorm(embed_dim, eps=eps)
            self.norm = nn.LayerNorm(embed_dim, eps=eps)
            self.proj = nn.Parameter(torch.empty(embed_dim, proj_dim))  # type: ignore[arg-type]
        # The normalisation is part of the model (upstream applies it inside PerceptualModel).
        self.mean: torch.Tensor
        self.std: torch.Tensor
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        self.input_folded = False  # see fold_input_normalization

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 [B, 3, H, W] -> the float input upstream computes (ToTensor, Normalize), fp32.

        ``mean`` and ``std`` are fp32 buffers holding the exact constants whatever the
        model's dtype (``load_model`` sets them after the cast): normalise in fp32, then
        cast. Used only until :meth:`fold_input_normalization`.
        """
        x = images.to(torch.float32).div(255)
        return (x - self.mean) / self.std

    @torch.no_grad()
    def fold_input_normalization(self, mean: tuple[float, float, float],
                                 std: tuple[float, float, float]) -> None:
        """Fold ``(x / 255 - mean) / std`` into the patch embedding's convolution.

        The convolution is linear in its input, so with ``W'[o, c] = W[o, c] / (255 std_c)``
        and ``b'[o] = b[o] - sum_{c,i,j} W[o, c, i, j] mean_c / std_c`` it maps the raw
        pixel values 0..255 to exactly what it mapped the normalised input to. Computed in
        float64 from the exact constants, before any cast, so no rounded constant is ever
        used; the five elementwise fp32 passes over the input (cast, divide, subtract,
        divide, cast) become one cast to fp32 (exact: integers up to 255).

        The folded convolution stays in fp32 whatever the model's dtype (``load_model``
        keeps it so) and its output is cast: the mean now enters through the bias, and
        ``sum W' x`` and ``b'`` are large terms that cancel, which fp32 does exactly enough
        and bf16 does not (measured: bf16 weights here doubled the embedding error). It is
        about 0.6% of the model's FLOPs. Call it on fp32 weights, once.
        """
        assert not self.input_folded, "the input normalisation is folded already"
        conv = self.patch_embed.proj
        assert conv.bias is not None
        w = conv.weight.double()
        m = torch.tensor(mean, dtype=torch.float64).view(1, 3, 1, 1)
        s = torch.tensor(std, dtype=torch.float64).view(1, 3, 1, 1)
        bias = conv.bias.double() - (w * (m / s)).sum(dim=(1, 2, 3))
        conv.weight.copy_((w / (255 * s)).to(conv.weight.dtype))
        conv.bias.copy_(bias.to(conv.bias.dtype))
        self.input_folded = True

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 images [B, 3, 224, 224] -> features: [B, 768] (cls), [B, proj_dim]
        (embedding) or [B, tokens, 768] (cls_patch)."""
        assert images.shape[-2:] == (self.img_size, self.img_size), (
            f"expected {self.img_size}x{self.img_size} images, got {tuple(images.shape)}"
        )
        dtype = self.cls_token.dtype
        if self.input_folded:  # normalisation is in the fp32 weights: normalise, then cast
            x = self.patch_embed(images.to(torch.float32)).to(dtype)
        else:
            x = self.patch_embed(self.normalize(images).to(dtype))
        x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1)
        x = x + self.pos_embed
        if self.ln_pre is not None:
            x = self.ln_pre(x)
        # Only the CLS token of the last block is read unless every token is the feature.
        last = len(self.blocks) - 1 if self.feature != "cls_patch" else -1
        for i, blk in enumerate(self.blocks):
            x = blk(x, cls_only=i == last)
        if self.feature == "cls_patch":
            return x
        cls = x[:, 0]
        if self.feature == "cls":
            return cls
        assert self.norm is not None and self.proj is not None
        return self.norm(cls) @ self.proj
