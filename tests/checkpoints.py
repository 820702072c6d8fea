"""Test weights in the upstream DreamSim cache layout, and the upstream package as oracle.

The real weights cannot be downloaded here, so the tests build a cache with random,
non-zero weights in exactly the layout ``dreamsim(cache_dir=X)`` reads (NOTES §3):
every parameter (biases and LayerNorm affine included) perturbed so that no bug can hide
behind a zero or a one, and LoRA A and B both random (peft initialises B to zero).
``upstream_dreamsim`` runs the real ``dreamsim`` package on the same files, with
``torch.hub.load`` redirected to dreamsim's own vendored ViT (no network).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import torch

from predictor.layout import DINO_BACKBONE_FILE, get_variant

# The training configs of the DreamSim repo (the released adapter_config.json differ only
# in bookkeeping fields); the loader under test reads whatever the file says.
LORA_CONFIGS = {
    "dino_vitb16": {"r": 16, "lora_alpha": 32, "lora_dropout": 0.2},
    "ensemble": {"r": 16, "lora_alpha": 8, "lora_dropout": 0.3},
}


def _perturb(module: torch.nn.Module, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """State dict with every float tensor moved off its init (std 0.02 noise added)."""
    state = {}
    for key, value in module.state_dict().items():
        noise = torch.randn(value.shape, generator=gen) * 0.02
        state[key] = (value + noise).contiguous()
    return state


def _vit_base(*, clip: bool) -> torch.nn.Module:
    from dreamsim.feature_extraction.vision_transformer import vit_base

    vit = vit_base(patch_size=16)
    if clip:
        vit.pos_drop = torch.nn.LayerNorm(vit.embed_dim)
    return vit


def _write_backbones(cache: Path, variant: str, gen: torch.Generator) -> None:
    (cache / "checkpoints").mkdir(parents=True, exist_ok=True)
    torch.save(_perturb(_vit_base(clip=False), gen), cache / DINO_BACKBONE_FILE)
    # The full DINO training checkpoint: upstream reads only the projection head from it.
    head = {
        "module.head.mlp.0.weight": (2048, 768), "module.head.mlp.0.bias": (2048,),
        "module.head.mlp.2.weight": (2048, 2048), "module.head.mlp.2.bias": (2048,),
        "module.head.mlp.4.weight": (256, 2048), "module.head.mlp.4.bias": (256,),
        "module.head.last_layer.weight": (2048, 256),
    }
    student = {k: torch.randn(s, generator=gen) * 0.02 for k, s in head.items()}
    torch.save({"student": student}, cache / "dino_vitb16_pretrain.pth")
    if variant == "ensemble":
        for name in ("clip_vitb16", "open_clip_vitb16"):
            state = _perturb(_vit_base(clip=True), gen)
            state["proj"] = torch.randn(768, 512, generator=gen) * 0.03
            torch.save({"state_dict": state}, cache / f"{name}_pretrain.pth.tar")


@contextlib.contextmanager
def hub_redirect(cache: Path) -> Iterator[None]:
    """Make upstream's ``torch.hub.load('facebookresearch/dino:main', 'dino_vitb16')``
    build dreamsim's vendored ViT from the cached backbone instead of going online."""

    def load(repo: str, model: str, *args: Any, **kwargs: Any) -> torch.nn.Module:
        assert (repo, model) == ("facebookresearch/dino:main", "dino_vitb16"), (repo, model)
        vit = _vit_base(clip=False)
        vit.load_state_dict(torch.load(cache / DINO_BACKBONE_FILE, weights_only=True))
        return vit

    with mock.patch("torch.hub.load", load):
        yield


def _write_lora(cache: Path, variant: str, gen: torch.Generator) -> None:
    import peft
    from dreamsim.config import dreamsim_args
    from dreamsim.model import PerceptualModel

    with hub_redirect(cache):
        model = PerceptualModel(**dreamsim_args["model_config"][variant], device="cpu",
                                load_dir=str(cache), normalize_embeds=True)
    config = peft.LoraConfig(**LORA_CONFIGS[variant], bias="none", target_modules=["qkv"])
    peft_model = peft.get_peft_model(model, config)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_A" in name or "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.05)
    peft_model.save_pretrained(str(cache / get_variant(variant).lora_dir))


def build_upstream_cache(cache: Path, variant: str, *, seed: int = 0) -> Path:
    """Write a complete random-weight cache for ``variant`` into ``cache``; return it."""
    gen = torch.Generator().manual_seed(seed)
    _write_backbones(cache, variant, gen)
    _write_lora(cache, variant, gen)
    return cache


def adapter_as_bin(cache: Path, variant: str) -> None:
    """Replace the variant's ``adapter_model.safetensors`` by the same tensors as ``.bin``."""
    from safetensors.torch import load_file

    lora = cache / get_variant(variant).lora_dir
    tensors = load_file(str(lora / "adapter_model.safetensors"))
    torch.save(tensors, lora / "adapter_model.bin")
    (lora / "adapter_model.safetensors").unlink()


def upstream_dreamsim(cache: Path, variant: str) -> tuple[torch.nn.Module, Any]:
    """The upstream package's model and preprocess on ``cache``, on CPU in fp32."""
    from dreamsim import dreamsim

    with hub_redirect(cache):
        model, preprocess = dreamsim(pretrained=True, device="cpu", cache_dir=str(cache),
                                     dreamsim_type=variant)
    return model, preprocess


def read_adapter_config(cache: Path, variant: str) -> dict[str, Any]:
    return json.loads((cache / get_variant(variant).lora_dir / "adapter_config.json").read_text())
