"""The predictor's distances equal the upstream ``dreamsim`` package's (fp32, CPU).

Both run on the same random-weight cache in the upstream layout (tests/checkpoints.py),
on real photographs and distorted versions of them.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from predictor.checkpoint import WeightsError
from predictor.layout import get_variant
from predictor.model import load_model
from tests.checkpoints import (
    LORA_CONFIGS,
    adapter_as_bin,
    build_upstream_cache,
    read_adapter_config,
    upstream_dreamsim,
)
from tests.conftest import Photo, encode
from transformer.images import decode_image

TOLERANCE = 1e-5


def _upstream_batch(preprocess, photos: list[Photo]) -> torch.Tensor:
    return torch.cat([preprocess(p.image) for p in photos])


def _pairs(n: int) -> list[tuple[int, int]]:
    """Every photo against the next few: originals vs distortions and vs other photos."""
    return [(i, j) for i in range(n) for j in range(i + 1, min(n, i + 7))]


def _ours(cache: Path, variant: str, batch_u8: torch.Tensor, **kw: object) -> torch.Tensor:
    model = load_model(cache_dir=cache, variant=variant, device="cpu", precision="fp32")
    return model.embedder.embed(batch_u8, batch_size=int(kw.get("batch_size", 64)))


def _compare(cache: Path, variant: str, photos: list[Photo]) -> float:
    up_model, preprocess = upstream_dreamsim(cache, variant)
    x = _upstream_batch(preprocess, photos)
    pairs = _pairs(len(photos))
    a = torch.tensor([i for i, _ in pairs])
    b = torch.tensor([j for _, j in pairs])
    with torch.no_grad():
        # PerceptualModel.forward is embed(a), embed(b), 1 - cosine: embed each photo once.
        e = up_model.embed(x)
        expected = (1 - torch.nn.functional.cosine_similarity(e[a], e[b], dim=-1)).double()
    # uint8 is lossless: upstream's tensor is exactly uint8 / 255.
    u8 = (x * 255).round().to(torch.uint8)
    emb = _ours(cache, variant, u8).double()
    got = 1 - (emb[a] * emb[b]).sum(dim=1)
    worst = float((got - expected).abs().max())
    assert worst < TOLERANCE, f"{variant}: max |ours - upstream| = {worst:.3g}"
    # Random weights still separate these images: the comparison is not between zeros.
    assert float(expected.max()) > 0.05 and float(expected.std()) > 0.01
    print(f"\n{variant}: {len(pairs)} pairs, distances {float(expected.min()):.4f}.."
          f"{float(expected.max()):.4f}, max |ours - upstream| = {worst:.2e}")
    return worst


def test_dino_matches_upstream(dino_weights_dir: Path, photos: list[Photo]) -> None:
    _compare(dino_weights_dir, "dino_vitb16", photos)


@pytest.mark.slow
def test_ensemble_matches_upstream(ensemble_weights_dir: Path, photos: list[Photo]) -> None:
    _compare(ensemble_weights_dir, "ensemble", photos[:10])


# The six variants beyond dino_vitb16 and ensemble: 4 photos (6 pairs) each keeps the
# suite short; dino_vitb16 and ensemble above cover many more images.
OTHER_VARIANTS = ["dinov2_vitb14", "clip_vitb32", "open_clip_vitb32", "synclr_vitb16",
                  "dino_vitb16_patch", "dinov2_vitb14_patch"]


def compare_with_forward(cache: Path, variant: str, photos: list[Photo]) -> float:
    """Max |ours - upstream| over all pairs of ``photos``, upstream's distance being its
    ``PerceptualModel.forward`` (for the patch variants the pooling and concatenation
    happen there, not in ``embed``)."""
    up_model, preprocess = upstream_dreamsim(cache, variant)
    x = _upstream_batch(preprocess, photos)
    pairs = [(i, j) for i in range(len(photos)) for j in range(i + 1, len(photos))]
    a = torch.tensor([i for i, _ in pairs])
    b = torch.tensor([j for _, j in pairs])
    with torch.no_grad():
        expected = up_model(x[a], x[b]).double()
    del up_model
    emb = _ours(cache, variant, (x * 255).round().to(torch.uint8)).double()
    assert emb.shape[1] == get_variant(variant).embedding_dim
    assert torch.allclose(emb.norm(dim=1), torch.ones(len(photos), dtype=torch.float64))
    got = 1 - (emb[a] * emb[b]).sum(dim=1)
    worst = float((got - expected).abs().max())
    print(f"\n{variant}: {len(pairs)} pairs, distances {float(expected.min()):.4f}.."
          f"{float(expected.max()):.4f}, max |ours - upstream| = {worst:.2e}")
    assert worst < TOLERANCE, f"{variant}: max |ours - upstream| = {worst:.3g}"
    assert float(expected.max()) > 0.05 and float(expected.std()) > 0.01
    return worst


@pytest.mark.slow
@pytest.mark.parametrize("variant", OTHER_VARIANTS)
def test_variant_matches_upstream(variant: str, tmp_path: Path, photos: list[Photo]) -> None:
    """Each variant on its own random cache, LoRA ranks and alphas unlike the releases."""
    cache = build_upstream_cache(tmp_path / variant, variant, seed=11)
    config = read_adapter_config(cache, variant)
    assert (config["r"], config["lora_alpha"]) == (
        LORA_CONFIGS[variant]["r"], LORA_CONFIGS[variant]["lora_alpha"])
    try:
        # originals and distortions: photos[0] and photos[1] are one photo and a distortion
        compare_with_forward(cache, variant, [photos[i] for i in (0, 1, 4, 8)])
    finally:
        shutil.rmtree(cache)  # 350 MB each: do not let six of them pile up in /tmp


def test_whole_chain_from_encoded_bytes(dino_weights_dir: Path, photos: list[Photo]) -> None:
    """PNG/JPEG bytes through our decoder and model vs PIL + upstream preprocess + model."""
    import io

    from PIL import Image

    up_model, preprocess = upstream_dreamsim(dino_weights_dir, "dino_vitb16")
    files = [encode(p.image, fmt) for p, fmt in zip(photos[:6], ["PNG", "JPEG"] * 3, strict=True)]
    with torch.no_grad():
        expected = up_model.embed(torch.cat([preprocess(Image.open(io.BytesIO(f)))
                                             for f in files])).double()
    ours = torch.from_numpy(np.stack([decode_image(f) for f in files]))
    got = _ours(dino_weights_dir, "dino_vitb16", ours).double()
    assert float((got - expected).abs().max()) < TOLERANCE


def test_chunking_does_not_change_embeddings(dino_weights_dir: Path, photos: list[Photo]) -> None:
    _, preprocess = upstream_dreamsim(dino_weights_dir, "dino_vitb16")
    u8 = (_upstream_batch(preprocess, photos[:7]) * 255).round().to(torch.uint8)
    whole = _ours(dino_weights_dir, "dino_vitb16", u8, batch_size=64)
    chunked = _ours(dino_weights_dir, "dino_vitb16", u8, batch_size=3)
    assert float((whole - chunked).abs().max()) < 1e-6


def test_adapter_bin_and_config_values_are_read(tmp_path: Path, photos: list[Photo]) -> None:
    """A .bin adapter loads; rank and alpha come from adapter_config.json, not from code."""
    cache = build_upstream_cache(tmp_path / "c", "dino_vitb16", seed=5)
    adapter_as_bin(cache, "dino_vitb16")
    config_path = cache / "dino_vitb16_single_lora" / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config["lora_alpha"] = 5  # upstream reads this too, so both must follow it
    config_path.write_text(json.dumps(config))
    assert _compare(cache, "dino_vitb16", photos[:5]) < TOLERANCE


def test_missing_weights_name_the_file_and_the_command(tmp_path: Path,
                                                        dino_weights_dir: Path) -> None:
    with pytest.raises(WeightsError) as err:
        load_model(cache_dir=tmp_path, variant="dino_vitb16", device="cpu", precision="fp32")
    msg = str(err.value)
    assert "checkpoints/dino_vitbase16_pretrain.pth" in msg
    assert "python -m predictor.weights --model-type dino_vitb16" in msg

    partial = tmp_path / "partial"
    shutil.copytree(dino_weights_dir, partial)
    shutil.rmtree(partial / "dino_vitb16_single_lora")
    with pytest.raises(WeightsError, match="dino_vitb16_single_lora/adapter_config.json"):
        load_model(cache_dir=partial, variant="dino_vitb16", device="cpu", precision="fp32")


def test_corrupt_weights_are_an_error_not_random(tmp_path: Path, dino_weights_dir: Path) -> None:
    cache = tmp_path / "corrupt"
    shutil.copytree(dino_weights_dir, cache)
    backbone = cache / "checkpoints" / "dino_vitbase16_pretrain.pth"
    backbone.write_bytes(backbone.read_bytes()[: 1 << 20])  # truncated download
    with pytest.raises(WeightsError, match="corrupt or truncated"):
        load_model(cache_dir=cache, variant="dino_vitb16", device="cpu", precision="fp32")


def test_bf16_on_cpu_stays_close(dino_weights_dir: Path, photos: list[Photo]) -> None:
    _, preprocess = upstream_dreamsim(dino_weights_dir, "dino_vitb16")
    u8 = (_upstream_batch(preprocess, photos[:6]) * 255).round().to(torch.uint8)
    fp32 = _ours(dino_weights_dir, "dino_vitb16", u8)
    model = load_model(cache_dir=dino_weights_dir, variant="dino_vitb16", device="cpu",
                       precision="bf16")
    bf16 = model.embedder.embed(u8, batch_size=64)
    d32 = 1 - fp32[:-1].mul(fp32[1:]).sum(1)
    d16 = 1 - bf16[:-1].mul(bf16[1:]).sum(1)
    deviation = float((d32 - d16).abs().max())
    print(f"\nbf16 vs fp32 distance deviation (CPU): {deviation:.2e}")
    assert deviation < 0.05


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("precision", ["fp32", "fp16", "bf16"])
def test_gpu_matches_cpu(dino_weights_dir: Path, photos: list[Photo], precision: str) -> None:
    _, preprocess = upstream_dreamsim(dino_weights_dir, "dino_vitb16")
    u8 = (_upstream_batch(preprocess, photos[:8]) * 255).round().to(torch.uint8)
    cpu = _ours(dino_weights_dir, "dino_vitb16", u8)
    model = load_model(cache_dir=dino_weights_dir, variant="dino_vitb16", device="cuda",
                       precision=precision)
    gpu = model.embedder.embed(u8, batch_size=64)
    d_cpu = 1 - cpu[:-1].mul(cpu[1:]).sum(1)
    d_gpu = 1 - gpu[:-1].mul(gpu[1:]).sum(1)
    tol = 1e-4 if precision == "fp32" else 0.02
    assert float((d_cpu - d_gpu).abs().max()) < tol


def test_out_of_memory_splits_the_batch(dino_weights_dir: Path, photos: list[Photo],
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Simulated device OOM (no GPU here): any chunk over 2 images fails; embed still
    answers, with the same embeddings as an unconstrained run."""
    _, preprocess = upstream_dreamsim(dino_weights_dir, "dino_vitb16")
    u8 = (_upstream_batch(preprocess, photos[:5]) * 255).round().to(torch.uint8)
    model = load_model(cache_dir=dino_weights_dir, variant="dino_vitb16", device="cpu",
                       precision="fp32").embedder
    expected = model.embed(u8, batch_size=64)
    real_forward = type(model).forward
    sizes: list[int] = []

    def forward(self: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
        sizes.append(images.shape[0])
        if images.shape[0] > 2:
            raise torch.OutOfMemoryError("simulated: CUDA out of memory")
        return real_forward(self, images)  # type: ignore[arg-type]

    monkeypatch.setattr(type(model), "forward", forward)
    got = model.embed(u8, batch_size=64)
    assert sizes == [5, 2, 2, 1]  # 5 fails, then halves to 2 and keeps it
    assert float((got - expected).abs().max()) < 1e-6

    def always_oom(self: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
        raise torch.OutOfMemoryError("simulated")

    monkeypatch.setattr(type(model), "forward", always_oom)
    with pytest.raises(torch.OutOfMemoryError):
        model.embed(u8, batch_size=4)
