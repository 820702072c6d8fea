"""Prometheus metrics of the transformer, served on KServe's ``/metrics``.

Images of ``/embed`` and ``/v1/embeddings`` requests count in the image, decode, fetch,
cache and predictor metrics like those of ``/similarity``. KServe adds per-model
``request_preprocess_seconds`` / ``request_predict_seconds`` /
``request_postprocess_seconds``; these cover the public API.
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram

_TIME_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

REQUESTS = Counter("similarity_requests_total", "POST /similarity answers", ["code"])
REQUEST_SECONDS = Histogram("similarity_request_seconds", "POST /similarity wall time",
                            buckets=_TIME_BUCKETS)
PAIRS = Histogram("similarity_pairs_per_request", "Pairs per request",
                  buckets=(1, 2, 5, 10, 20, 30, 50, 100, 128, 256))
EMBED_REQUESTS = Counter("embed_requests_total", "POST /embed answers", ["code"])
EMBED_REQUEST_SECONDS = Histogram("embed_request_seconds", "POST /embed wall time",
                                  buckets=_TIME_BUCKETS)
EMBED_IMAGES = Histogram("embed_images_per_request", "Images per /embed request",
                         buckets=(1, 2, 5, 10, 20, 50, 100, 256, 512, 1024))
OPENAI_REQUESTS = Counter("openai_embeddings_requests_total", "POST /v1/embeddings answers",
                          ["code"])
OPENAI_REQUEST_SECONDS = Histogram("openai_embeddings_request_seconds",
                                   "POST /v1/embeddings wall time", buckets=_TIME_BUCKETS)
OPENAI_IMAGES = Histogram("openai_embeddings_images_per_request",
                          "Images per /v1/embeddings request",
                          buckets=(1, 2, 5, 10, 20, 50, 100, 256, 512, 1024))
DECODE_SECONDS = Histogram("similarity_image_decode_seconds", "Decoding one image",
                           buckets=_TIME_BUCKETS)
FETCH_SECONDS = Histogram("similarity_url_fetch_seconds", "Fetching one URL",
                          buckets=_TIME_BUCKETS)
PREDICTOR_SECONDS = Histogram("similarity_predictor_call_seconds", "One call to the predictor",
                              buckets=_TIME_BUCKETS)
CACHE_HITS = Counter("similarity_embedding_cache_hits_total", "Images served from the cache")
CACHE_MISSES = Counter("similarity_embedding_cache_misses_total", "Images not in the cache")
IMAGES = Counter("similarity_images_total", "Image inputs by outcome", ["outcome"])
CLIENT_DISCONNECTS = Counter("similarity_client_disconnects_total",
                             "Clients that went away before their request body was read")
MODEL_CHANGED_RETRIES = Counter(
    "similarity_model_changed_retries_total",
    "Requests answered again because their answers came from two model identities (a "
    "predictor replaced while they ran, or cached embeddings of the model before)")
HTTP_REFUSED = Counter("similarity_http_refused_total",
                       "Connections closed before a request reached the app (http_guard.py), "
                       "by reason: connections, idle_evicted, header_timeout, header_limit",
                       ["reason"])
