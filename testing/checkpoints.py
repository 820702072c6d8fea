"""Test weights in the upstream DreamSim cache layout, and the upstream package as oracle.

The real weights cannot be downloaded here, so the tests build a cache with random,
non-zero weights in exactly the layout ``dreamsim(cache_dir=X)`` reads for each of the
eight variants (NOTES §3): every parameter (biases, LayerNorm affine and DINOv2's layer
scale included) perturbed so that no bug can hide behind a zero or a one, and LoRA A and B
both random (peft initialises B to zero). ``upstream_dreamsim`` runs the real ``dreamsim``
package on the same files, with ``torch.hub.load`` redirected offline: DINO to dreamsim's
own vendored ViT, DINOv2 to the official ``dinov2`` package from PyPI (the code torch.hub
would fetch from GitHub) built with the hub's arguments.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import inspect
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any
from unittest import mock

import torch

from predictor.layout import DINO_BACKBONE_FILE, DINOV2_BACKBONE_FILE, get_variant

# LoRA settings of the test adapters. dino_vitb16 and ensemble use the DreamSim repo's
# training configs (the released adapter_config.json differ only in bookkeeping fields);
# the others use ranks and alphas unlike any release, so that a loader that assumed them
# would fail; the loader under test reads whatever the file says.
LORA_CONFIGS: dict[str, dict[str, Any]] = {
    "dino_vitb16": {"r": 16, "lora_alpha": 32, "lora_dropout": 0.2},
    "ensemble": {"r": 16, "lora_alpha": 8, "lora_dropout": 0.3},
    "dinov2_vitb14": {"r": 8, "lora_alpha": 3, "lora_dropout": 0.1},
    "clip_vitb32": {"r": 4, "lora_alpha": 20, "lora_dropout": 0.0},
    "open_clip_vitb32": {"r": 12, "lora_alpha": 6, "lora_dropout": 0.2},
    "synclr_vitb16": {"r": 6, "lora_alpha": 9, "lora_dropout": 0.1},
    "dino_vitb16_patch": {"r": 10, "lora_alpha": 4, "lora_dropout": 0.3},
    "dinov2_vitb14_patch": {"r": 2, "lora_alpha": 7, "lora_dropout": 0.0},
}
# What upstream's dreamsim() is called with for each MODEL_TYPE (patch: use_patch_model).
UPSTREAM_CALL = {name: (name.removesuffix("_patch"), name.endswith("_patch"))
                 for name in LORA_CONFIGS}


def _perturb(module: torch.nn.Module, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """State dict with every float tensor moved off its init (std 0.02 noise added)."""
    state = {}
    for key, value in module.state_dict().items():
        noise = torch.randn(value.shape, generator=gen) * 0.02
        state[key] = (value + noise).contiguous()
    return state


def _vit_base(*, clip: bool, patch_size: int = 16) -> torch.nn.Module:
    from dreamsim.feature_extraction.vision_transformer import vit_base

    vit = vit_base(patch_size=patch_size)
    if clip:
        vit.pos_drop = torch.nn.LayerNorm(vit.embed_dim)
    return vit


def _dinov2_vitb14() -> torch.nn.Module:
    """torch.hub's ``dinov2_vitb14`` architecture (hubconf defaults), from PyPI's dinov2."""
    from dinov2.models.vision_transformer import vit_base

    return vit_base(patch_size=14, img_size=518, init_values=1.0, ffn_layer="mlp",
                    block_chunks=0)


def _dino_head(gen: torch.Generator) -> dict[str, Any]:
    """The full DINO training checkpoint: upstream reads only the projection head from it."""
    head = {
        "module.head.mlp.0.weight": (2048, 768), "module.head.mlp.0.bias": (2048,),
        "module.head.mlp.2.weight": (2048, 2048), "module.head.mlp.2.bias": (2048,),
        "module.head.mlp.4.weight": (256, 2048), "module.head.mlp.4.bias": (256,),
        "module.head.last_layer.weight": (2048, 256),
    }
    return {"student": {k: torch.randn(s, generator=gen) * 0.02 for k, s in head.items()}}


def _clip_file(cache: Path, name: str, patch_size: int, gen: torch.Generator) -> None:
    state = _perturb(_vit_base(clip=True, patch_size=patch_size), gen)
    state["proj"] = torch.randn(768, 512, generator=gen) * 0.03
    torch.save({"state_dict": state}, cache / f"{name}_pretrain.pth.tar")


def _write_backbones(cache: Path, variant: str, gen: torch.Generator) -> None:
    (cache / "checkpoints").mkdir(parents=True, exist_ok=True)
    base = variant.removesuffix("_patch")
    if base in ("dino_vitb16", "ensemble"):
        torch.save(_perturb(_vit_base(clip=False), gen), cache / DINO_BACKBONE_FILE)
        torch.save(_dino_head(gen), cache / "dino_vitb16_pretrain.pth")
    if base == "ensemble":
        for name in ("clip_vitb16", "open_clip_vitb16"):
            _clip_file(cache, name, 16, gen)
    if base == "dinov2_vitb14":
        torch.save(_perturb(_dinov2_vitb14(), gen), cache / DINOV2_BACKBONE_FILE)
        # In the release zip; upstream only checks that it exists.
        torch.save({"note": "not read"}, cache / "dinov2_vitb14_pretrain.pth")
    if base in ("clip_vitb32", "open_clip_vitb32"):
        _clip_file(cache, base, 32, gen)
    if base == "synclr_vitb16":
        state = _perturb(_vit_base(clip=False), gen)
        torch.save({"model": {f"module.visual.{k}": v for k, v in state.items()}},
                   cache / "synclr_vit_b_16.pth")


@contextlib.contextmanager
def hub_redirect(cache: Path) -> Iterator[None]:
    """Make upstream's ``torch.hub.load`` build DINO (dreamsim's vendored ViT) and DINOv2
    (PyPI's dinov2 package) from the cached backbones instead of going online."""

    def load(repo: str, model: str, *args: Any, **kwargs: Any) -> torch.nn.Module:
        if (repo, model) == ("facebookresearch/dino:main", "dino_vitb16"):
            vit, path = _vit_base(clip=False), cache / DINO_BACKBONE_FILE
        elif (repo, model) == ("facebookresearch/dinov2", "dinov2_vitb14"):
            vit, path = _dinov2_vitb14(), cache / DINOV2_BACKBONE_FILE
        else:
            raise AssertionError(f"unexpected torch.hub.load{(repo, model)}")
        vit.load_state_dict(torch.load(path, weights_only=True))
        return vit

    with mock.patch("torch.hub.load", load):
        yield


def _write_lora(cache: Path, variant: str, gen: torch.Generator,
                lora: dict[str, Any] | None) -> None:
    import peft
    from dreamsim.config import dreamsim_args
    from dreamsim.model import PerceptualModel

    with hub_redirect(cache):
        model = PerceptualModel(**dreamsim_args["model_config"][variant], device="cpu",
                                load_dir=str(cache), normalize_embeds=True)
    config = peft.LoraConfig(**(lora or LORA_CONFIGS[variant]), bias="none",
                             target_modules=["qkv"])
    peft_model = peft.get_peft_model(model, config)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_A" in name or "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.05)
    peft_model.save_pretrained(str(cache / get_variant(variant).lora_dir))


def build_upstream_cache(cache: Path, variant: str, *, seed: int = 0,
                         lora: dict[str, Any] | None = None) -> Path:
    """Write a complete random-weight cache for ``variant`` into ``cache``; return it.

    Args:
        cache: the cache dir to fill.
        variant: a MODEL_TYPE.
        seed: for every random tensor.
        lora: ``r``, ``lora_alpha``, ``lora_dropout`` of the adapter (default
            ``LORA_CONFIGS[variant]``).
    """
    gen = torch.Generator().manual_seed(seed)
    _write_backbones(cache, variant, gen)
    _write_lora(cache, variant, gen, lora)
    return cache


# --- the cache of built checkpoints, shared by every pytest process on the machine ---------

# Where built checkpoints are kept; "off" (or an empty value) builds into a fresh temporary
# folder each time instead. The default is outside the repo so that every worktree's runs
# (and every engineer's) reuse the same builds.
CACHE_ENV = "SIMILARITY_TEST_CHECKPOINTS"


def checkpoint_cache_root() -> Path | None:
    """The folder holding built checkpoints, or None when caching is off.

    ``$SIMILARITY_TEST_CHECKPOINTS`` if set, else ``$XDG_CACHE_HOME/image-similarity-tests``
    (``~/.cache/image-similarity-tests`` without XDG_CACHE_HOME).
    """
    value = os.environ.get(CACHE_ENV)
    if value is not None:
        return None if value.strip() in ("", "off", "0") else Path(value)
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "image-similarity-tests"


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "absent"


def checkpoint_key(variant: str, seed: int, lora: dict[str, Any] | None) -> str:
    """A hash of everything a build depends on: its parameters, the builder's source (this
    module and the layout it writes), and the packages whose code or RNG shape the tensors.
    Editing the builder therefore builds afresh instead of reusing stale files."""
    from predictor import layout

    parts = {
        "variant": variant, "seed": seed, "lora": lora or LORA_CONFIGS[variant],
        "builder": inspect.getsource(sys.modules[__name__]),
        "layout": inspect.getsource(layout),
        "versions": {d: _version(d) for d in ("torch", "dreamsim", "peft", "dinov2",
                                              "safetensors")},
    }
    digest = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:20]
    return f"{variant}-s{seed}-{digest}"


def cached_upstream_cache(variant: str, *, seed: int = 0, lora: dict[str, Any] | None = None,
                          scratch: Path | None = None) -> Path:
    """``build_upstream_cache(variant, seed, lora)``, built at most once per machine.

    A build takes 9-14 s and 350 MB or more, and the suite asks for the same ones many
    times. The result lives under ``checkpoint_cache_root()`` in a folder named by
    ``checkpoint_key``. Safe for concurrent pytest processes: a lock file serialises
    builders of one key, and a build is written to a temporary sibling and renamed into
    place, so a half-written folder is never seen under the final name.

    The returned folder is shared: callers must treat it as read-only (copy it to change
    it). With caching off it is built into ``scratch`` (or a new temporary folder).
    """
    root = checkpoint_cache_root()
    if root is None:
        target = Path(tempfile.mkdtemp(prefix=f"ckpt-{variant}-", dir=scratch))
        return build_upstream_cache(target, variant, seed=seed, lora=lora)
    root.mkdir(parents=True, exist_ok=True)
    final = root / checkpoint_key(variant, seed, lora)
    if final.is_dir():
        return final
    with open(root / f"{final.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes or the process dies
        if final.is_dir():  # another process built it while this one waited
            return final
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=root))
        try:
            build_upstream_cache(tmp, variant, seed=seed, lora=lora)
            tmp.chmod(0o755)  # mkdtemp's 0700 would hide it from other users and containers
            os.rename(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def copy_of(cache: Path, dest: Path) -> Path:
    """A private, writable copy of a shared cached checkpoint (for tests that edit one)."""
    shutil.copytree(cache, dest)
    return dest


@functools.lru_cache(maxsize=2)
def cached_upstream_dreamsim(cache: Path, variant: str) -> tuple[Any, Any]:
    """``upstream_dreamsim`` built once per (cache, variant) in this process: the oracle is
    only read (eval mode, no_grad), and building it costs seconds each time. Two kept: the
    session's dino_vitb16 and the one being compared. (Typed Any: upstream's
    ``PerceptualModel``, whose ``embed`` a plain ``torch.nn.Module`` type would hide.)"""
    model, preprocess = upstream_dreamsim(cache, variant)
    model.eval()
    return model, preprocess


def adapter_as_bin(cache: Path, variant: str) -> None:
    """Replace the variant's ``adapter_model.safetensors`` by the same tensors as ``.bin``."""
    from safetensors.torch import load_file

    lora = cache / get_variant(variant).lora_dir
    tensors = load_file(str(lora / "adapter_model.safetensors"))
    torch.save(tensors, lora / "adapter_model.bin")
    (lora / "adapter_model.safetensors").unlink()


def upstream_dreamsim(cache: Path, variant: str) -> tuple[Any, Any]:
    """The upstream package's model and preprocess on ``cache``, on CPU in fp32."""
    from dreamsim import dreamsim

    dreamsim_type, use_patch_model = UPSTREAM_CALL[variant]
    with hub_redirect(cache):
        model, preprocess = dreamsim(pretrained=True, device="cpu", cache_dir=str(cache),
                                     dreamsim_type=dreamsim_type,
                                     use_patch_model=use_patch_model)
    return model, preprocess


def read_adapter_config(cache: Path, variant: str) -> dict[str, Any]:
    return json.loads((cache / get_variant(variant).lora_dir / "adapter_config.json").read_text())
