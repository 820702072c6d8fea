"""The upstream DreamSim weight-cache layout, as data.

Follows what ``dreamsim.dreamsim(cache_dir=X, dreamsim_type=...)`` (dreamsim 0.2.1,
``dreamsim/model.py``, ``config.py`` and ``feature_extraction/*``) leaves in ``X`` for each
of its eight variants (a ``*_patch`` type is upstream's ``use_patch_model=True``), so a
cache made by the upstream package works here unchanged and the other way round.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from service_common.wire import IMAGE_SIZE  # re-exported: the side every variant sees

# Release archives: <RELEASE_URL>/<tag>/dreamsim_<type>_checkpoint.zip (dreamsim/config.py).
RELEASE_URL = "https://github.com/ssundaram21/dreamsim/releases/download"
DINO_BACKBONE_URL = (
    "https://dl.fbaipublicfiles.com/dino/dino_vitbase16_pretrain/dino_vitbase16_pretrain.pth"
)
DINOV2_BACKBONE_URL = (
    "https://dl.fbaipublicfiles.com/dinov2/dinov2_vitb14/dinov2_vitb14_pretrain.pth"
)
# torch.hub keeps downloads under <hub dir>/checkpoints; upstream sets the hub dir to X.
DINO_BACKBONE_FILE = "checkpoints/dino_vitbase16_pretrain.pth"
DINOV2_BACKBONE_FILE = "checkpoints/dinov2_vitb14_pretrain.pth"


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
# torch.hub.load("facebookresearch/dinov2", "dinov2_vitb14"): ViT-B/14 trained at 518 px
# (37 x 37 position grid), layer scale, no register tokens.
DINOV2_HUB_FILE = HubFile(
    path=DINOV2_BACKBONE_FILE,
    url=DINOV2_BACKBONE_URL,
    expected_shapes={
        "cls_token": (1, 1, 768),
        "pos_embed": (1, 1370, 768),
        "patch_embed.proj.weight": (768, 3, 14, 14),
        "blocks.11.attn.qkv.weight": (2304, 768),
        "blocks.11.ls1.gamma": (768,),
        "blocks.11.ls2.gamma": (768,),
    },
)


@dataclass(frozen=True)
class Backbone:
    """One ViT-B backbone of a DreamSim variant: its file, architecture and feature.

    Attributes:
        name: upstream model name (``dino_vitb16``, ``dinov2_vitb14``, ``clip_vitb32``...).
        weights_file: path of its weights relative to the cache dir.
        file_format: how the file holds the weights: ``state_dict`` (a plain state dict:
            the torch.hub downloads), ``clip`` (``{"state_dict": ..., "proj" inside}``,
            ``pos_drop`` being ``ln_pre``), ``synclr`` (``{"model": {"module.visual.<key>"}}``).
        feature: what upstream reads from it: ``cls`` (token 0 of the last block, before the
            final norm), ``embedding`` (``ln_pre``, final norm on token 0, ``@ proj``) or
            ``cls_patch`` (every token of the last block).
        patch_size: 16, 32 or 14 (stride = patch size for every released variant).
        pos_grid: side of the position-embedding grid stored in the file (37 for DINOv2,
            trained at 518 px: resized to the 224 px grid at load time as upstream does).
        layer_scale: blocks scale their residual branches (``ls1.gamma``, ``ls2.gamma``).
        mean: per-channel normalisation mean applied inside the model.
        std: per-channel normalisation std.
        layer_norm_eps: LayerNorm epsilon of every norm in the backbone.
        quick_gelu: CLIP's x * sigmoid(1.702 x) instead of exact GELU.
        feature_dim: size of the feature this backbone contributes to the embedding.
    """

    name: str
    weights_file: str
    file_format: str
    feature: str
    patch_size: int
    pos_grid: int
    layer_scale: bool
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    layer_norm_eps: float
    quick_gelu: bool
    feature_dim: int

    @property
    def grid(self) -> int:
        """Patches per side at 224 px."""
        return IMAGE_SIZE // self.patch_size


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

DINO_VITB16 = Backbone(
    name="dino_vitb16",
    weights_file=DINO_BACKBONE_FILE,
    file_format="state_dict",
    feature="cls",
    patch_size=16,
    pos_grid=14,
    layer_scale=False,
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
    layer_norm_eps=1e-6,
    quick_gelu=False,
    feature_dim=768,
)
DINOV2_VITB14 = Backbone(
    name="dinov2_vitb14",
    weights_file=DINOV2_BACKBONE_FILE,
    file_format="state_dict",
    feature="cls",
    patch_size=14,
    pos_grid=37,
    layer_scale=True,
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
    layer_norm_eps=1e-6,
    quick_gelu=False,
    feature_dim=768,
)
# SynCLR is loaded into DINO's ViT-B/16 (load_synclr_as_dino.py): same architecture.
SYNCLR_VITB16 = replace(DINO_VITB16, name="synclr_vitb16", weights_file="synclr_vit_b_16.pth",
                        file_format="synclr")
CLIP_VITB16 = Backbone(
    name="clip_vitb16",
    weights_file="clip_vitb16_pretrain.pth.tar",
    file_format="clip",
    feature="embedding",
    patch_size=16,
    pos_grid=14,
    layer_scale=False,
    mean=OPENAI_CLIP_MEAN,
    std=OPENAI_CLIP_STD,
    layer_norm_eps=1e-5,
    quick_gelu=True,
    feature_dim=512,
)
OPEN_CLIP_VITB16 = replace(CLIP_VITB16, name="open_clip_vitb16",
                           weights_file="open_clip_vitb16_pretrain.pth.tar", quick_gelu=False)
CLIP_VITB32 = replace(CLIP_VITB16, name="clip_vitb32", weights_file="clip_vitb32_pretrain.pth.tar",
                      patch_size=32, pos_grid=7)
OPEN_CLIP_VITB32 = replace(OPEN_CLIP_VITB16, name="open_clip_vitb32",
                           weights_file="open_clip_vitb32_pretrain.pth.tar", patch_size=32,
                           pos_grid=7)
# The patch models: CLS plus pooled patch tokens, 2 x 768 (PerceptualModel.forward).
DINO_VITB16_PATCH = replace(DINO_VITB16, feature="cls_patch", feature_dim=1536)
DINOV2_VITB14_PATCH = replace(DINOV2_VITB14, feature="cls_patch", feature_dim=1536)


@dataclass(frozen=True)
class Variant:
    """A DreamSim variant: its backbones (in embedding order) and where its files live.

    Attributes:
        name: the ``MODEL_TYPE`` value (upstream's ``dreamsim_args["model_config"]`` key).
        backbones: backbones whose features are concatenated, in upstream order.
        lora_dir: folder of the LoRA adapter (``adapter_config.json`` + weights).
        release_zip_url: the upstream release archive holding everything but the hub file.
        release_files: what the archive leaves in the cache dir (upstream's own check list,
            ``dreamsim.model.download_weights``).
        hub_file: the backbone fetched apart from the archive (torch.hub's download), if any.
        nights_accuracy: NIGHTS 2AFC test accuracy of the released weights (DreamSim
            README), None where upstream publishes none.
    """

    name: str
    backbones: tuple[Backbone, ...]
    lora_dir: str
    release_zip_url: str
    release_files: tuple[str, ...]
    hub_file: HubFile | None
    nights_accuracy: float | None = None

    @property
    def embedding_dim(self) -> int:
        return sum(b.feature_dim for b in self.backbones)

    @property
    def is_patch(self) -> bool:
        """CLS plus pooled patch features (upstream's ``use_patch_model=True``)."""
        return any(b.feature == "cls_patch" for b in self.backbones)

    @property
    def required_files(self) -> tuple[str, ...]:
        """Files the predictor reads, relative to the cache dir (adapter weights excluded:
        either ``adapter_model.safetensors`` or ``adapter_model.bin`` will do)."""
        return tuple(b.weights_file for b in self.backbones) + (
            f"{self.lora_dir}/adapter_config.json",
        )


def _release(tag: str, name: str) -> str:
    return f"{RELEASE_URL}/{tag}/dreamsim_{name}_checkpoint.zip"


VARIANTS: dict[str, Variant] = {
    "ensemble": Variant(
        name="ensemble",
        backbones=(DINO_VITB16, CLIP_VITB16, OPEN_CLIP_VITB16),
        lora_dir="ensemble_lora",
        release_zip_url=_release("v0.2.0-checkpoints", "ensemble"),
        release_files=(
            "dino_vitb16_pretrain.pth",
            "open_clip_vitb16_pretrain.pth.tar",
            "clip_vitb16_pretrain.pth.tar",
            "ensemble_lora",
        ),
        hub_file=DINO_HUB_FILE,
        nights_accuracy=96.2,
    ),
    "dino_vitb16": Variant(
        name="dino_vitb16",
        backbones=(DINO_VITB16,),
        lora_dir="dino_vitb16_single_lora",
        release_zip_url=_release("v0.2.0-checkpoints", "dino_vitb16"),
        release_files=("dino_vitb16_pretrain.pth", "dino_vitb16_single_lora"),
        hub_file=DINO_HUB_FILE,
        nights_accuracy=94.8,
    ),
    "dinov2_vitb14": Variant(
        name="dinov2_vitb14",
        backbones=(DINOV2_VITB14,),
        lora_dir="dinov2_vitb14_single_lora",
        release_zip_url=_release("v0.2.1-checkpoints", "dinov2_vitb14"),
        release_files=("dinov2_vitb14_pretrain.pth", "dinov2_vitb14_single_lora"),
        hub_file=DINOV2_HUB_FILE,
        nights_accuracy=95.0,
    ),
    "clip_vitb32": Variant(
        name="clip_vitb32",
        backbones=(CLIP_VITB32,),
        lora_dir="clip_vitb32_single_lora",
        release_zip_url=_release("v0.2.0-checkpoints", "clip_vitb32"),
        release_files=("clip_vitb32_pretrain.pth.tar", "clip_vitb32_single_lora"),
        hub_file=None,
        nights_accuracy=93.6,
    ),
    "open_clip_vitb32": Variant(
        name="open_clip_vitb32",
        backbones=(OPEN_CLIP_VITB32,),
        lora_dir="open_clip_vitb32_single_lora",
        release_zip_url=_release("v0.2.0-checkpoints", "open_clip_vitb32"),
        release_files=("open_clip_vitb32_pretrain.pth.tar", "open_clip_vitb32_single_lora"),
        hub_file=None,
        nights_accuracy=95.3,
    ),
    "synclr_vitb16": Variant(
        name="synclr_vitb16",
        backbones=(SYNCLR_VITB16,),
        lora_dir="synclr_vitb16_single_lora",
        release_zip_url=_release("v0.2.1-checkpoints", "synclr_vitb16"),
        release_files=("synclr_vit_b_16.pth", "synclr_vitb16_single_lora"),
        hub_file=None,
        nights_accuracy=95.9,
    ),
    "dino_vitb16_patch": Variant(
        name="dino_vitb16_patch",
        backbones=(DINO_VITB16_PATCH,),
        lora_dir="dino_vitb16_patch_lora",
        release_zip_url=_release("v0.2.1-checkpoints", "dino_vitb16_patch"),
        release_files=("dino_vitb16_pretrain.pth", "dino_vitb16_patch_lora"),
        hub_file=DINO_HUB_FILE,
    ),
    "dinov2_vitb14_patch": Variant(
        name="dinov2_vitb14_patch",
        backbones=(DINOV2_VITB14_PATCH,),
        lora_dir="dinov2_vitb14_patch_lora",
        release_zip_url=_release("v0.2.1-checkpoints", "dinov2_vitb14_patch"),
        release_files=("dinov2_vitb14_pretrain.pth", "dinov2_vitb14_patch_lora"),
        hub_file=DINOV2_HUB_FILE,
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
