"""DreamSim embeddings: load a variant from the upstream cache, embed uint8 images.

The computation is dreamsim 0.2.1's ``PerceptualModel.embed`` with ``normalize_embeds=True``:
features of each backbone concatenated in upstream order, then each embedding has its
mean over features subtracted and is L2-normalised, so that
``distance = 1 - <e_a, e_b>`` equals upstream's ``1 - cosine_similarity``. For the patch
variants the embedding is the unit-norm vector upstream's ``forward`` takes the cosine of
(``patch_embedding``). No kserve here.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .checkpoint import WeightsError, check_files, load_backbone_state, load_lora, merge_lora
from .device import (
    DeviceError,
    PrecisionPolicy,
    attention_backend,
    precision_policy,
    resolve_device,
)
from .layout import Variant, get_variant
from .vit import ViT

log = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "fp16", "bf16")
_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def resolve_dtype(precision: str, device: torch.device) -> torch.dtype:
    """``auto``: fp16 on CUDA, fp32 on CPU; otherwise as named."""
    if precision not in PRECISIONS:
        raise ValueError(f"PRECISION must be one of {PRECISIONS}, got {precision!r}")
    if precision == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    return _DTYPES[precision]


def normalize_embedding(feats: torch.Tensor) -> torch.Tensor:
    """Upstream's ``normalize_embedding``: subtract the mean over features, L2-normalise."""
    feats = feats - feats.mean(dim=-1, keepdim=True)
    return feats / feats.norm(dim=-1, keepdim=True)


def patch_embedding(tokens: torch.Tensor) -> torch.Tensor:
    """The patch models' embedding: unit-norm ``[CLS | mean of the patch tokens]``.

    Upstream (``PerceptualModel.embed`` then ``forward``): every token normalised on its
    own (``normalize_embedding_patch``: mean over features subtracted, L2-normalised), then
    the distance is ``1 - cosine`` of the CLS token concatenated with the average of the
    patch tokens (``adaptive_avg_pool2d`` over the grid). Dividing that concatenation by its
    norm here makes the distance a dot product, as for the other variants.

    Args:
        tokens: ``[B, 1 + patches, D]`` output of the last block.

    Returns:
        ``[B, 2 D]``, unit norm.
    """
    tokens = normalize_embedding(tokens)
    joined = torch.cat((tokens[:, 0], tokens[:, 1:].mean(dim=1)), dim=-1)
    return joined / joined.norm(dim=-1, keepdim=True)


class DreamSimEmbedder(nn.Module):
    """Normalised DreamSim embeddings of uint8 images.

    Args:
        variant: the DreamSim variant (its backbones, in embedding order).
    """

    def __init__(self, variant: Variant) -> None:
        super().__init__()
        self.variant = variant
        self.backbones = nn.ModuleList(
            ViT(
                feature=b.feature,
                eps=b.layer_norm_eps,
                quick_gelu=b.quick_gelu,
                mean=b.mean,
                std=b.std,
                proj_dim=b.feature_dim if b.feature == "embedding" else None,
                patch_size=b.patch_size,
                layer_scale=b.layer_scale,
            )
            for b in variant.backbones
        )

    @property
    def embedding_dim(self) -> int:
        return self.variant.embedding_dim

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 [B, 3, 224, 224] on the model's device -> fp32 [B, D], unit norm.

        ``1 - <e_a, e_b>`` is upstream's distance for every variant.
        """
        if self.variant.is_patch:
            (backbone,) = self.backbones
            return patch_embedding(backbone(images).float())
        feats = torch.cat([bb(images).float() for bb in self.backbones], dim=-1)
        return normalize_embedding(feats)

    @torch.inference_mode()
    def embed(self, images: torch.Tensor, *, batch_size: int) -> torch.Tensor:
        """Embed any number of images in chunks of at most ``batch_size``; fp32 on CPU.

        The CPU path of the server and the direct API (tests, benches). On CUDA the server
        runs ``predictor.runner.StagedRunner`` instead (pinned staging, streams, graphs);
        this one copies synchronously from pageable memory.

        Out of device memory, the chunk is halved and retried (down to one image), so a
        request that fits at a smaller chunk never fails; the smaller size is kept for the
        rest of the call.
        """
        assert images.dtype == torch.uint8 and images.ndim == 4 and images.shape[1] == 3, (
            f"expected uint8 [N, 3, H, W], got {images.dtype} {tuple(images.shape)}"
        )
        device = self.device
        out = torch.empty((images.shape[0], self.embedding_dim), dtype=torch.float32)
        start, size = 0, batch_size
        while start < images.shape[0]:
            chunk = images[start : start + size]
            try:
                out[start : start + chunk.shape[0]] = self(chunk.to(device)).cpu()
            except torch.OutOfMemoryError:
                if chunk.shape[0] == 1:
                    raise
                size = max(1, chunk.shape[0] // 2)
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                log.warning("out of memory on %s at %d images; retrying in chunks of %d",
                            device, chunk.shape[0], size)
                continue
            start += chunk.shape[0]
        return out


@dataclass(frozen=True)
class LoadedModel:
    """A ready embedder and what it runs on.

    Attributes:
        embedder: the model, in eval mode, on ``device`` in ``dtype``.
        device: where it runs.
        dtype: the weights' dtype.
        load_seconds: wall time of loading (files to ready weights, before warm-up).
        policy: the float policy set for ``dtype`` (TF32 and reductions).
        attention: the SDPA backend serving the model's attention (``flash``, ...).
    """

    embedder: DreamSimEmbedder
    device: torch.device
    dtype: torch.dtype
    load_seconds: float
    policy: PrecisionPolicy
    attention: str


def load_model(*, cache_dir: Path | str, variant: str, device: str, precision: str,
               fallback: bool = True, fold_input: bool = True) -> LoadedModel:
    """Load a DreamSim variant from an upstream-layout cache, LoRA merged.

    Args:
        cache_dir: MODEL_CACHE_DIR, in the layout ``dreamsim(cache_dir=...)`` leaves.
        variant: MODEL_TYPE (one of ``predictor.layout.VARIANTS``).
        device: ``cuda``, ``cuda:N`` or ``cpu``.
        precision: ``auto``, ``fp32``, ``fp16`` or ``bf16``.
        fallback: DEVICE_FALLBACK: ``cuda`` without a usable GPU runs on the CPU (else
            DeviceError).
        fold_input: fold the input normalisation into the patch embedding
            (``ViT.fold_input_normalization``); False keeps it as fp32 passes (the
            reference the tests compare the fold with).

    Raises:
        WeightsError: a file is missing or unreadable (the message says how to fetch it).
        DeviceError: the device cannot be honoured (predictor.device.resolve_device).
        ValueError: an unknown variant or precision.
    """
    start = time.perf_counter()
    spec = get_variant(variant)
    cache = Path(cache_dir).expanduser().resolve()
    dev = resolve_device(device, fallback=fallback)
    dtype = resolve_dtype(precision, dev)
    policy = precision_policy(dtype)
    check_files(cache, spec)
    adapter = load_lora(cache, spec)

    with torch.device("meta"):
        embedder = DreamSimEmbedder(spec)
    for index, (backbone, vit) in enumerate(zip(spec.backbones, embedder.backbones, strict=True)):
        state = load_backbone_state(cache, backbone, spec)
        state = merge_lora(state, adapter.pairs.get(index, {}), adapter)
        try:
            vit.load_state_dict(state, strict=True, assign=True)
        except RuntimeError as e:
            raise WeightsError(
                f"{cache / backbone.weights_file} does not match {backbone.name}'s ViT-B/"
                f"{backbone.patch_size}: "
                f"{str(e)[:300]}"
            ) from e
        vit.mean = torch.tensor(backbone.mean).view(1, 3, 1, 1)  # real, not meta, tensors
        vit.std = torch.tensor(backbone.std).view(1, 3, 1, 1)
        if fold_input:  # in float64 from the exact constants, before the cast below
            assert isinstance(vit, ViT)
            vit.fold_input_normalization(backbone.mean, backbone.std)
    # A folded patch embedding stays fp32 (ViT.fold_input_normalization says why).
    vits = [vit for vit in embedder.backbones if isinstance(vit, ViT)]
    folded: list[dict[str, torch.Tensor] | None] = [
        {k: v.float().clone() for k, v in vit.patch_embed.state_dict().items()}
        if vit.input_folded else None for vit in vits]
    embedder = embedder.to(dtype)
    for vit, kept in zip(vits, folded, strict=True):
        if kept is not None:
            vit.patch_embed.float().load_state_dict(kept)
    embedder = embedder.to(dev).eval().requires_grad_(False)
    for vit, backbone in zip(embedder.backbones, spec.backbones, strict=True):
        # The buffers are not in the checkpoint, and .to(dtype) would have rounded them
        # (bf16: 0.485 -> 0.4844): the exact constants, in fp32, set after the cast.
        vit.mean = torch.tensor(backbone.mean, dtype=torch.float32, device=dev).view(1, 3, 1, 1)
        vit.std = torch.tensor(backbone.std, dtype=torch.float32, device=dev).view(1, 3, 1, 1)
    return LoadedModel(embedder=embedder, device=dev, dtype=dtype,
                       load_seconds=time.perf_counter() - start, policy=policy,
                       attention=attention_backend(dev, dtype))


__all__ = ["DeviceError", "DreamSimEmbedder", "LoadedModel", "WeightsError", "load_model",
           "resolve_device", "resolve_dtype", "PRECISIONS"]
