"""Bulk scoring against the image-similarity-service (DreamSim distances over HTTP).

The service answers at most ``MAX_PAIRS_PER_REQUEST`` pairs per request and turns callers
away with 429/503 when it is busy; this package does the rest for data sets of thousands of
pairs: chunking, concurrent requests, retries honouring ``Retry-After``, per-pair errors
that never lose a run, resumable output, progress, a summary and an HTML report.

Python::

    from similarity_client import SimilarityClient

    client = SimilarityClient("http://localhost:8080", concurrency=4)
    for result in client.score([("ref.png", "gen.png", "p1"), (img_bytes, pil_image, "p2")]):
        print(result.pair_id, result.distance, result.error)

Command line: ``similarity-client score pairs.csv --url URL --out scores.jsonl``.
"""

from .client import AsyncSimilarityClient, ServiceError, SimilarityClient
from .models import ClientStats, EmbedResult, Pair, PairResult
from .retry import RetryPolicy

__all__ = ["AsyncSimilarityClient", "ClientStats", "EmbedResult", "Pair", "PairResult",
           "RetryPolicy", "ServiceError", "SimilarityClient"]
__version__ = "0.1.0"
