"""Prometheus metrics of the predictor, served on KServe's ``/metrics`` (default registry).

KServe adds its own ``request_predict_seconds`` histogram per model; these say what the
batching does: how big the forward passes are, how long requests wait for one, and how
long the model runs.
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram

_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
_TIME_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)

BATCH_IMAGES = Histogram("dreamsim_batch_images", "Images per forward pass (after batching)",
                         buckets=_SIZE_BUCKETS)
BATCH_REQUESTS = Histogram("dreamsim_batch_requests", "Requests sharing one forward pass",
                           buckets=_SIZE_BUCKETS)
QUEUE_WAIT = Histogram("dreamsim_queue_wait_seconds",
                       "Time a request waits before its forward pass starts", buckets=_TIME_BUCKETS)
INFERENCE = Histogram("dreamsim_inference_seconds", "Model time of one forward pass (all chunks)",
                      buckets=_TIME_BUCKETS)
IMAGES = Counter("dreamsim_images_total", "Images embedded")
