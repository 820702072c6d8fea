"""The predictor's distances equal the upstream ``dreamsim`` package's (fp32, CPU), and
the transformer's two answers agree with each other on them, for every variant.

Both run on the same random-weight cache in the upstream layout (testing/checkpoints.py,
built once per machine), on real photographs and distorted versions of them. The upstream
oracle is built once per checkpoint (``cached_upstream_dreamsim``).
"""

from __future__ import annotations

import functools
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from predictor.checkpoint import WeightsError
from predictor.layout import VARIANTS, get_variant
from predictor.model import load_model
from testing.checkpoints import (
    LORA_CONFIGS,
    UPSTREAM_CALL,
    adapter_as_bin,
    cached_upstream_cache,
    cached_upstream_dreamsim,
    copy_of,
    read_adapter_config,
    upstream_dreamsim,
)
from tests.conftest import Photo, encode
from transformer.embeddings import decode_embedding, embeddings_in_order, plan_images
from transformer.images import decode_image
from transformer.schemas import EmbedImage, ImagePair
from transformer.scoring import plan_pairs, score_pairs

TOLERANCE = 1e-5
# The seed of the per-variant checkpoints (also what tests/predictor/test_server.py serves).
VARIANT_SEED = 11


def _upstream_batch(preprocess, photos: list[Photo]) -> torch.Tensor:
    return torch.cat([preprocess(p.image) for p in photos])


def _pairs(n: int, window: int = 7) -> list[tuple[int, int]]:
    """Every photo against the next few: originals vs distortions and vs other photos."""
    return [(i, j) for i in range(n) for j in range(i + 1, min(n, i + window))]


@functools.lru_cache(maxsize=1)
def _loaded(cache: Path, variant: str):  # type: ignore[no-untyped-def]
    """Our fp32 model on ``cache``, loaded once for the tests in a row that use it."""
    return load_model(cache_dir=cache, variant=variant, device="cpu", precision="fp32")


def _ours(cache: Path, variant: str, batch_u8: torch.Tensor, batch_size: int = 64
          ) -> torch.Tensor:
    model = _loaded(cache, variant)
    return model.embedder.embed(batch_u8, batch_size=batch_size)


def check_embed_matches_similarity(embeddings: np.ndarray,
                                   pairs: list[tuple[int, int]]) -> np.ndarray:
    """What ``/similarity`` and ``/embed`` would answer for these predictor embeddings
    (the transformer's own pure functions: ``score_pairs`` and ``embeddings_in_order`` with
    base64), and that ``1 - dot`` of the ``/embed`` vectors is the ``/similarity``
    distance. Returns the ``/similarity`` distances."""
    names = [f"img{i}" for i in range(len(embeddings))]
    # The predictor's rows in another order than the request's (as after cache hits).
    served_rows = np.ascontiguousarray(embeddings[::-1])
    row_of = {name: len(names) - 1 - i for i, name in enumerate(names)}
    pair_plan = plan_pairs([ImagePair(reference_image=names[a], generated_image=names[b])
                            for a, b in pairs])
    scores = score_pairs(served_rows, pair_plan, [row_of[x] for x in pair_plan.inputs],
                         [None] * len(pairs))
    image_plan = plan_images([EmbedImage(image=x) for x in names])
    answer = embeddings_in_order(served_rows, image_plan,
                                 [row_of[x] for x in image_plan.inputs],
                                 ids=list(range(len(names))), encoding="base64")
    assert [e.id for e in answer] == list(range(len(names)))
    vectors = np.stack([decode_embedding(e.embedding) for e in answer]).astype(np.float64)
    assert vectors.shape == embeddings.shape
    for (a, b), score in zip(pairs, scores, strict=True):
        assert abs((1 - vectors[a] @ vectors[b]) - score.distance) < 1e-6, (a, b)
    return np.array([s.distance for s in scores])


def compare_with_upstream(cache: Path, variant: str, photos: list[Photo],
                          pairs: list[tuple[int, int]]) -> float:
    """Max |ours - upstream| over ``pairs`` of ``photos``; asserted under TOLERANCE.

    Upstream's distance is ``1 - cosine`` of its ``embed`` for the CLS variants (each photo
    embedded once) and its ``PerceptualModel.forward`` for the patch variants, where the
    pooling and concatenation happen in ``forward``, not in ``embed``. The transformer's
    answers are checked on our embeddings too (``check_embed_matches_similarity``), and
    its ``/similarity`` distances against upstream's.
    """
    up_model, preprocess = cached_upstream_dreamsim(cache, variant)
    x = _upstream_batch(preprocess, photos)
    a = torch.tensor([i for i, _ in pairs])
    b = torch.tensor([j for _, j in pairs])
    with torch.no_grad():
        if UPSTREAM_CALL[variant][1]:  # use_patch_model
            expected = up_model(x[a], x[b]).double()
        else:
            e = up_model.embed(x)
            expected = (1 - torch.nn.functional.cosine_similarity(e[a], e[b], dim=-1)).double()
    # uint8 is lossless: upstream's tensor is exactly uint8 / 255.
    emb = _ours(cache, variant, (x * 255).round().to(torch.uint8))
    assert emb.shape[1] == get_variant(variant).embedding_dim
    emb64 = emb.double()
    assert torch.allclose(emb64.norm(dim=1), torch.ones(len(photos), dtype=torch.float64))
    got = 1 - (emb64[a] * emb64[b]).sum(dim=1)
    worst = float((got - expected).abs().max())
    print(f"\n{variant}: {len(pairs)} pairs, distances {float(expected.min()):.4f}.."
          f"{float(expected.max()):.4f}, max |ours - upstream| = {worst:.2e}")
    assert worst < TOLERANCE, f"{variant}: max |ours - upstream| = {worst:.3g}"
    # Random weights still separate these images: the comparison is not between zeros.
    assert float(expected.max()) > 0.05 and float(expected.std()) > 0.01
    served = check_embed_matches_similarity(emb.numpy(), pairs)
    assert float(np.abs(served - expected.numpy()).max()) < TOLERANCE
    return worst


def test_dino_matches_upstream(dino_weights_dir: Path, photos: list[Photo]) -> None:
    compare_with_upstream(dino_weights_dir, "dino_vitb16", photos, _pairs(len(photos)))


@pytest.mark.slow
def test_ensemble_matches_upstream(ensemble_weights_dir: Path, photos: list[Photo]) -> None:
    compare_with_upstream(ensemble_weights_dir, "ensemble", photos[:10], _pairs(10))


# The six variants beyond dino_vitb16 and ensemble: 4 photos (6 pairs) each keeps the
# suite short; dino_vitb16 and ensemble above cover many more images.
OTHER_VARIANTS = sorted(set(VARIANTS) - {"dino_vitb16", "ensemble"})


def test_the_variants_checked_are_the_layout_table() -> None:
    assert len(OTHER_VARIANTS) == 6 and set(OTHER_VARIANTS) <= set(LORA_CONFIGS)


@pytest.mark.slow
@pytest.mark.parametrize("variant", OTHER_VARIANTS)
def test_variant_matches_upstream(variant: str, photos: list[Photo]) -> None:
    """Each variant on its own random cache, LoRA ranks and alphas unlike the releases."""
    cache = cached_upstream_cache(variant, seed=VARIANT_SEED)
    config = read_adapter_config(cache, variant)
    assert (config["r"], config["lora_alpha"]) == (
        LORA_CONFIGS[variant]["r"], LORA_CONFIGS[variant]["lora_alpha"])
    # originals and distortions: photos[0] and photos[1] are one photo and a distortion
    compare_with_upstream(cache, variant, [photos[i] for i in (0, 1, 4, 8)], _pairs(4, 4))
    cached_upstream_dreamsim.cache_clear()  # one oracle of 350 MB+ at a time
    _loaded.cache_clear()


def test_whole_chain_from_encoded_bytes(dino_weights_dir: Path, photos: list[Photo]) -> None:
    """PNG/JPEG bytes through our decoder and model vs PIL + upstream preprocess + model."""
    import io

    from PIL import Image

    up_model, preprocess = cached_upstream_dreamsim(dino_weights_dir, "dino_vitb16")
    files = [encode(p.image, fmt) for p, fmt in zip(photos[:6], ["PNG", "JPEG"] * 3, strict=True)]
    with torch.no_grad():
        expected = up_model.embed(torch.cat([preprocess(Image.open(io.BytesIO(f)))
                                             for f in files])).double()
    ours = torch.from_numpy(np.stack([decode_image(f) for f in files]))
    got = _ours(dino_weights_dir, "dino_vitb16", ours).double()
    assert float((got - expected).abs().max()) < TOLERANCE


def test_chunking_does_not_change_embeddings(dino_weights_dir: Path, photos: list[Photo]) -> None:
    _, preprocess = cached_upstream_dreamsim(dino_weights_dir, "dino_vitb16")
    u8 = (_upstream_batch(preprocess, photos[:7]) * 255).round().to(torch.uint8)
    whole = _ours(dino_weights_dir, "dino_vitb16", u8, batch_size=64)
    chunked = _ours(dino_weights_dir, "dino_vitb16", u8, batch_size=3)
    assert float((whole - chunked).abs().max()) < 1e-6


def test_adapter_bin_and_config_values_are_read(tmp_path: Path, dino_weights_dir: Path,
                                                photos: list[Photo]) -> None:
    """A .bin adapter loads; rank and alpha come from adapter_config.json, not from code."""
    cache = copy_of(dino_weights_dir, tmp_path / "c")  # edited below: a private copy
    adapter_as_bin(cache, "dino_vitb16")
    config_path = cache / "dino_vitb16_single_lora" / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config["lora_alpha"] = 5  # upstream reads this too, so both must follow it
    config_path.write_text(json.dumps(config))
    assert not (cache / "dino_vitb16_single_lora" / "adapter_model.safetensors").exists()
    # Both sides built on this edited copy (a fresh oracle: not the cached one).
    up_model, preprocess = upstream_dreamsim(cache, "dino_vitb16")
    x = _upstream_batch(preprocess, photos[:5])
    pairs = _pairs(5)
    a, b = torch.tensor([i for i, _ in pairs]), torch.tensor([j for _, j in pairs])
    with torch.no_grad():
        e = up_model.embed(x)
    expected = (1 - torch.nn.functional.cosine_similarity(e[a], e[b], dim=-1)).double()
    emb = load_model(cache_dir=cache, variant="dino_vitb16", device="cpu", precision="fp32"
                     ).embedder.embed((x * 255).round().to(torch.uint8), batch_size=64).double()
    got = 1 - (emb[a] * emb[b]).sum(dim=1)
    assert float((got - expected).abs().max()) < TOLERANCE
    # ... and alpha 5 really changed the model: the unedited checkpoint gives other values.
    unedited = _ours(dino_weights_dir, "dino_vitb16", (x * 255).round().to(torch.uint8))
    assert float((unedited.double() - emb).abs().max()) > 1e-3


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
    _, preprocess = cached_upstream_dreamsim(dino_weights_dir, "dino_vitb16")
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
    _, preprocess = cached_upstream_dreamsim(dino_weights_dir, "dino_vitb16")
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
    _, preprocess = cached_upstream_dreamsim(dino_weights_dir, "dino_vitb16")
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
