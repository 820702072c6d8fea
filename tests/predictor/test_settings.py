"""Predictor settings that derive limits from other settings."""

from __future__ import annotations

from predictor.settings import IMAGE_BYTES, PredictorSettings


def test_grpc_message_limit_fits_the_largest_pair_or_embed_request() -> None:
    headroom = 4 << 20
    assert PredictorSettings().grpc_message_limit() == 256 * IMAGE_BYTES + headroom
    pairs = PredictorSettings(max_pairs_per_request=10, max_images_per_request=8)
    assert pairs.grpc_message_limit() == 20 * IMAGE_BYTES + headroom
    images = PredictorSettings(max_pairs_per_request=10, max_images_per_request=500)
    assert images.grpc_message_limit() == 500 * IMAGE_BYTES + headroom
