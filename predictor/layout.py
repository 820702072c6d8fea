"""The upstream DreamSim weight-cache layout, as data.

Follows what ``dreamsim.dreamsim(cache_dir=X, dreamsim_type=...)`` (dreamsim 0.2.1,
``dreamsim/model.py`` and ``feature_extraction/*``) leaves in ``X``, so a cache made by
the upstream package works here unchanged and the other way round.
"""

from __future__ import annotations

from dataclasses import dataclass

RELEASE_BASE_URL = "https://github.com/ssundaram21/dreamsim/releases/download/v0.2.0-checkpoints"
DINO_BACKBONE_URL = (
    "https://dl.fbaipublicfiles.com/dino/dino_vitbase16_pretrain/dino_vitbase16_pretrain.pth"
)
# torch.hub keeps downloads under <hub dir>/checkpoints; upstream sets the hub dir to X.
DINO_BACKBONE_FILE = "checkpoints/dino_vitbase16_pretrain.pth"


@dataclass(frozen=True)
class HubFile:
    """A backbone that upstream gets through ``torch.hub`` rather than from the release zip.

    Attributes:
        path: where torch.hub leaves it, relative to the cache dir.
        url: where torch.hub downloads it from.
        expected_shapes: tensors that identify the file, with their shapes (None: any
            shape); a ViT-S, another patch size or a training checkpoint fails the check.
    """

    path: str
    url: str
    expected_shapes: dict[str, tuple[int, ...] | None]


DINO_HUB_FILE = HubFile(
    path=DINO_BACKBONE_FILE,
    url=DINO_BACKBONE_URL,
    expected_shapes={
        "cls_token": None,
        "pos_embed": None,
        "patch_embed.proj.weight": (768, 3, 16, 16),
        "blocks.11.attn.qkv.weight": (2304, 768),
    },
)


@dataclass(frozen=True)
class Backbone:
    """One ViT-B/16 backbone of a DreamSim variant.

    Attributes:
        name: upstream model name (``dino_vitb16``, ``clip_vitb16``, ``open_clip_vitb16``).
        weights_file: path of its weights relative to the cache dir.
        kind: ``dino`` (cls token of the last block, before the final norm) or ``clip``
            (ln_pre, final norm, token 0 projected by ``proj``).
        mean: per-channel normalisation mean applied inside the model.
        std: per-channel normalisation std.
        layer_norm_eps: LayerNorm epsilon of every norm in the backbone.
        quick_gelu: CLIP's x * sigmoid(1.702 x) instead of exact GELU.
        feature_dim: size of the feature this backbone contributes.
    """

    name: str
    weights_file: str
    kind: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    layer_norm_eps: float
    quick_gelu: bool
    feature_dim: int


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

DINO_VITB16 = Backbone(
    name="dino_vitb16",
    weights_file=DINO_BACKBONE_FILE,
    kind="dino",
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
    layer_norm_eps=1e-6,
    quick_gelu=False,
    feature_dim=768,
)
CLIP_VITB16 = Backbone(
    name="clip_vitb16",
    weights_file="clip_vitb16_pretrain.pth.tar",
    kind="clip",
    mean=OPENAI_CLIP_MEAN,
    std=OPENAI_CLIP_STD,
    layer_norm_eps=1e-5,
    quick_gelu=True,
    feature_dim=512,
)
OPEN_CLIP_VITB16 = Backbone(
    name="open_clip_vitb16",
    weights_file="open_clip_vitb16_pretrain.pth.tar",
    kind="clip",
    mean=OPENAI_CLIP_MEAN,
    std=OPENAI_CLIP_STD,
    layer_norm_eps=1e-5,
    quick_gelu=False,
    feature_dim=512,
)


@dataclass(frozen=True)
class Variant:
    """A DreamSim variant: its backbones (in embedding order) and where its files live.

    Attributes:
        name: the ``MODEL_TYPE`` value.
        backbones: backbones whose features are concatenated, in upstream order.
        lora_dir: folder of the LoRA adapter (``adapter_config.json`` + weights).
        release_zip_url: the upstream release archive holding everything but the DINO backbone.
        release_files: what the archive leaves in the cache dir (upstream's own check list).
        hub_file: the backbone fetched apart from the archive (torch.hub's download), if any.
    """

    name: str
    backbones: tuple[Backbone, ...]
    lora_dir: str
    release_zip_url: str
    release_files: tuple[str, ...]
    hub_file: HubFile | None

    @property
    def embedding_dim(self) -> int:
        return sum(b.feature_dim for b in self.backbones)

    @property
    def required_files(self) -> tuple[str, ...]:
        """Files the predictor reads, relative to the cache dir (adapter weights excluded:
        either ``adapter_model.safetensors`` or ``adapter_model.bin`` will do)."""
        return tuple(b.weights_file for b in self.backbones) + (
            f"{self.lora_dir}/adapter_config.json",
        )


VARIANTS: dict[str, Variant] = {
    "dino_vitb16": Variant(
        name="dino_vitb16",
        backbones=(DINO_VITB16,),
        lora_dir="dino_vitb16_single_lora",
        release_zip_url=f"{RELEASE_BASE_URL}/dreamsim_dino_vitb16_checkpoint.zip",
        release_files=("dino_vitb16_pretrain.pth", "dino_vitb16_single_lora"),
        hub_file=DINO_HUB_FILE,
    ),
    "ensemble": Variant(
        name="ensemble",
        backbones=(DINO_VITB16, CLIP_VITB16, OPEN_CLIP_VITB16),
        lora_dir="ensemble_lora",
        release_zip_url=f"{RELEASE_BASE_URL}/dreamsim_ensemble_checkpoint.zip",
        release_files=(
            "dino_vitb16_pretrain.pth",
            "open_clip_vitb16_pretrain.pth.tar",
            "clip_vitb16_pretrain.pth.tar",
            "ensemble_lora",
        ),
        hub_file=DINO_HUB_FILE,
    ),
}

ADAPTER_WEIGHT_FILES = ("adapter_model.safetensors", "adapter_model.bin")


def get_variant(name: str) -> Variant:
    """Look up a variant by ``MODEL_TYPE``; a clear error lists the supported ones."""
    try:
        return VARIANTS[name]
    except KeyError:
        raise ValueError(
            f"unsupported MODEL_TYPE {name!r}; supported: {', '.join(sorted(VARIANTS))}"
        ) from None
