"""Reading DreamSim weights from the upstream cache layout, LoRA merged in.

Follows dreamsim 0.2.1: backbones as ``ViTExtractor.create_model`` loads them
(``checkpoints/dino_vitbase16_pretrain.pth`` and ``checkpoints/dinov2_vitb14_pretrain.pth``
through torch.hub for DINO and DINOv2; ``{clip,open_clip}_vitb{16,32}_pretrain.pth.tar`` as
``{"state_dict": ..., "proj" inside}``; ``synclr_vit_b_16.pth`` as
``{"model": {"module.visual.<key>": ...}}``),
and the LoRA adapter as ``PeftModel.from_pretrained`` reads it (``adapter_config.json``
plus ``adapter_model.safetensors`` or ``adapter_model.bin``). With ``bias="none"`` and no
dropout at inference, merging is exact up to rounding: ``W' = W + scale * B @ A`` with
``scale = lora_alpha / r`` (``lora_alpha / sqrt(r)`` with rsLoRA).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .layout import ADAPTER_WEIGHT_FILES, Backbone, Variant, get_variant
from .vit import resize_pos_embed

StateDict = dict[str, torch.Tensor]

# peft saves adapter keys as base_model.model.<module path>.lora_{A,B}.weight; in
# DreamSim's PerceptualModel the ViTs sit at extractor_list.<i>.model.
_LORA_KEY = re.compile(
    r"^base_model\.model\.extractor_list\.(\d+)\.model\.(.+)\.lora_([AB])\.weight$")


class WeightsError(RuntimeError):
    """The weights in MODEL_CACHE_DIR are missing, incomplete or unreadable."""


def _how_to_fetch(variant: Variant, cache_dir: Path) -> str:
    return (
        f"Fetch them with `python -m predictor.weights --model-type {variant.name} "
        f"--cache-dir {cache_dir}` (or `make weights`), or copy an existing upstream dreamsim "
        f"cache there; see README, 'Getting the weights'."
    )


def check_files(cache_dir: Path, variant: Variant) -> None:
    """Raise WeightsError naming every missing file, before anything is loaded."""
    missing = [f for f in variant.required_files if not (cache_dir / f).is_file()]
    lora = cache_dir / variant.lora_dir
    if not any((lora / name).is_file() for name in ADAPTER_WEIGHT_FILES):
        missing.append(f"{variant.lora_dir}/{' or '.join(ADAPTER_WEIGHT_FILES)}")
    if missing:
        raise WeightsError(
            f"DreamSim weights for MODEL_TYPE={variant.name} are incomplete in {cache_dir}: "
            f"missing {', '.join(missing)}. {_how_to_fetch(variant, cache_dir)}"
        )


def weights_fingerprint(cache_dir: Path | str, variant: str) -> str:
    """A short hash of the variant's weight files (paths, sizes, modification times)."""
    spec = get_variant(variant)
    cache = Path(cache_dir)
    lora = cache / spec.lora_dir
    files = [cache / f for f in spec.required_files] + [lora / f for f in ADAPTER_WEIGHT_FILES]
    h = hashlib.blake2b(digest_size=8)
    for path in files:
        if path.is_file():
            st = path.stat()
            h.update(f"{path.relative_to(cache)}:{st.st_size}:{st.st_mtime_ns};".encode())
    return h.hexdigest()


def _torch_load(path: Path, variant: Variant, cache_dir: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt, truncated, or not a torch file
        raise WeightsError(
            f"cannot read {path}: {type(e).__name__}: {str(e)[:200]}. The file looks corrupt "
            f"or truncated; delete it and fetch it again. {_how_to_fetch(variant, cache_dir)}"
        ) from e


SYNCLR_PREFIX = "module.visual."


def _raw_state(path: Path, backbone: Backbone, variant: Variant, cache_dir: Path) -> Any:
    """The state dict as the file holds it, unwrapped per ``backbone.file_format``."""
    raw = _torch_load(path, variant, cache_dir)
    if backbone.file_format == "clip":
        if not isinstance(raw, dict) or "state_dict" not in raw:
            raise WeightsError(f"{path} has no 'state_dict' entry; not an upstream DreamSim file")
        raw = raw["state_dict"]
    elif backbone.file_format == "synclr":
        # load_synclr_as_dino.py: {"model": {"module.visual.<key>": ...}}, prefix stripped.
        if not isinstance(raw, dict) or not isinstance(raw.get("model"), dict):
            raise WeightsError(f"{path} has no 'model' entry; not a SynCLR checkpoint")
        raw = raw["model"]
        odd = [k for k in raw if not k.startswith(SYNCLR_PREFIX)]
        if odd:
            raise WeightsError(f"{path}: keys without the {SYNCLR_PREFIX!r} prefix: {odd[:3]}")
        raw = {k.removeprefix(SYNCLR_PREFIX): v for k, v in raw.items()}
    if not isinstance(raw, dict):
        raise WeightsError(f"{path} does not hold a state dict")
    return raw


def load_backbone_state(cache_dir: Path, backbone: Backbone, variant: Variant) -> StateDict:
    """The backbone's state dict, renamed to ``predictor.vit.ViT``'s parameter names.

    Dropped: the final norm and head where the feature is read before them (``cls``,
    ``cls_patch``), DINOv2's ``mask_token`` (used only in training). The position
    embedding is resized to the 224 px grid where the file's differs (DINOv2's 518 px).
    """
    path = cache_dir / backbone.weights_file
    raw = _raw_state(path, backbone, variant, cache_dir)
    state: StateDict = {}
    for key, value in raw.items():
        if backbone.feature != "embedding" and key.startswith(("norm.", "head.")):
            continue  # DreamSim's feature is taken before the final norm
        if key == "mask_token":
            continue
        if key.startswith("pos_drop."):
            key = "ln_pre." + key.removeprefix("pos_drop.")
        state[key] = value
    pos = state.get("pos_embed")
    if isinstance(pos, torch.Tensor) and pos.ndim == 3:
        try:
            state["pos_embed"] = resize_pos_embed(pos, backbone.grid)
        except AssertionError as e:
            raise WeightsError(f"{path}: pos_embed {list(pos.shape)}: {e}") from e
    return state


@dataclass(frozen=True)
class LoraAdapter:
    """A LoRA adapter as released: its config and per-backbone (A, B) pairs.

    Attributes:
        config: the parsed ``adapter_config.json``.
        pairs: ``pairs[i][module_path] = (A, B)`` for backbone ``i``.
    """

    config: dict[str, Any]
    pairs: dict[int, dict[str, tuple[torch.Tensor, torch.Tensor]]]

    def scale(self, module_path: str, rank: int) -> float:
        """``lora_alpha / r`` (rsLoRA: ``/ sqrt(r)``), honouring per-module patterns."""
        alpha = float(self.config["lora_alpha"])
        for pattern, value in (self.config.get("alpha_pattern") or {}).items():
            if re.match(rf"(.*\.)?{pattern}$", module_path):
                alpha = float(value)
        if self.config.get("use_rslora"):
            return alpha / math.sqrt(rank)
        return alpha / rank


def _targets(config: dict[str, Any], name: str) -> bool:
    """peft's rule: a string is a full-match regex; a list matches a name or a name suffix."""
    targets = config["target_modules"]
    if isinstance(targets, str):
        return re.fullmatch(targets, name) is not None
    return any(name == t or name.endswith("." + t) for t in targets)


def load_lora(cache_dir: Path, variant: Variant) -> LoraAdapter:
    """Read the variant's adapter; config values are read, never assumed."""
    lora_dir = cache_dir / variant.lora_dir
    config_path = lora_dir / "adapter_config.json"
    try:
        config = json.loads(config_path.read_text())
    except (OSError, ValueError) as e:
        raise WeightsError(
            f"cannot read {config_path}: {e}. {_how_to_fetch(variant, cache_dir)}") from e
    for key in ("r", "lora_alpha", "target_modules"):
        if key not in config:
            raise WeightsError(f"{config_path} has no {key!r}; not a LoRA adapter config")
    if config.get("bias", "none") != "none" or config.get("use_dora"):
        raise WeightsError(
            f"{config_path}: only bias='none' non-DoRA LoRA adapters can be merged "
            f"(bias={config.get('bias')!r}, use_dora={config.get('use_dora')!r})"
        )

    safetensors_path = lora_dir / "adapter_model.safetensors"
    if safetensors_path.is_file():
        from safetensors.torch import load_file

        try:
            tensors: StateDict = load_file(str(safetensors_path))
        except Exception as e:
            raise WeightsError(f"cannot read {safetensors_path}: {e}") from e
    else:
        tensors = _torch_load(lora_dir / "adapter_model.bin", variant, cache_dir)

    halves: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        m = _LORA_KEY.match(key)
        if m is None:
            raise WeightsError(f"{lora_dir}: unexpected adapter tensor {key!r}; cannot merge it")
        index, path, half = int(m.group(1)), m.group(2), m.group(3)
        if index >= len(variant.backbones):
            raise WeightsError(f"{lora_dir}: tensor {key!r} is for backbone {index}, "
                               f"but {variant.name} has {len(variant.backbones)}")
        if not _targets(config, f"extractor_list.{index}.model.{path}"):
            raise WeightsError(
                f"{lora_dir}: {key!r} is not a target of {config['target_modules']!r}")
        halves.setdefault((index, path), {})[half] = value
    pairs: dict[int, dict[str, tuple[torch.Tensor, torch.Tensor]]] = {}
    for (index, path), ab in halves.items():
        if set(ab) != {"A", "B"}:
            raise WeightsError(f"{lora_dir}: {path} of backbone {index} lacks lora_A or lora_B")
        pairs.setdefault(index, {})[path] = (ab["A"], ab["B"])
    if not pairs:
        raise WeightsError(f"{lora_dir}: the adapter holds no LoRA tensors")
    return LoraAdapter(config=config, pairs=pairs)


def merge_lora(state: StateDict, pairs: dict[str, tuple[torch.Tensor, torch.Tensor]],
               adapter: LoraAdapter) -> StateDict:
    """Return ``state`` with ``W + scale * B @ A`` for every adapted Linear (in float64)."""
    merged = dict(state)
    for path, (a, b) in pairs.items():
        key = f"{path}.weight"
        if key not in merged:
            raise WeightsError(f"LoRA targets {path!r}, which the backbone does not have")
        w = merged[key]
        rank = a.shape[0]
        assert b.shape == (w.shape[0], rank) and a.shape == (rank, w.shape[1]), (
            f"LoRA shapes {tuple(a.shape)}/{tuple(b.shape)} do not fit {key} {tuple(w.shape)}"
        )
        delta = adapter.scale(path, rank) * (b.double() @ a.double())
        merged[key] = (w.double() + delta).to(w.dtype)
    return merged
