"""Set-against-set metrics on DreamSim embeddings: pure numpy/scipy, no service.

Every function takes embeddings as arrays ``[n, dim]`` (rows as ``/embed`` answers them:
zero mean, unit L2 norm, so that ``1 - a @ b`` is the DreamSim distance) and works
blockwise, so that 10^4-10^5 images fit in a few hundred MB. Each is checked against its
reference implementation in ``tests/client/test_eval_metrics.py``:

- :func:`frechet_distance`: the FID formula (Heusel et al. 2017, "GANs trained by a two
  time-scale update rule converge to a local Nash equilibrium"; pytorch-fid's
  ``calculate_frechet_distance``) on these features; checked against ``scipy.linalg.sqrtm``.
- :func:`prdc`: precision, recall, density, coverage (Naeem et al. 2020, "Reliable
  fidelity and diversity metrics for generative models"); equal to the ``prdc`` package.
- :func:`vendi_score`: the Vendi score (Friedman & Dieng 2023, "The Vendi score: a
  diversity evaluation metric for machine learning") with the kernel ``k(a, b) = a @ b =
  1 - DreamSim distance``; equal to the ``vendi-score`` package.
- :func:`mean_pairwise_distance`: the mean DreamSim distance over distinct pairs.
- :func:`bootstrap`: percentile bootstrap intervals (Efron & Tibshirani 1993).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from .extras import require

np: Any = None
BLOCK_ROWS = 1024


def _np() -> Any:
    global np
    if np is None:
        np = require("numpy", "the evaluation metrics")
        require("scipy.linalg", "the evaluation metrics")
    return np


def frechet_distance(a: Any, b: Any, *, method: str = "auto") -> float:
    """``|mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2))`` of the Gaussians fitted to
    the two sets (sample means, covariances with ``n - 1``).

    ``tr((S_a S_b)^(1/2))`` is the sum of the square roots of the eigenvalues of
    ``S_a S_b``, taken without ``sqrtm`` of the product (not symmetric, and singular here:
    the per-image mean subtraction makes every embedding orthogonal to ``(1, ..., 1)``):

    - ``dim``: the eigenvalues of ``S_a^(1/2) S_b S_a^(1/2)`` (symmetric, positive
      semi-definite, the same eigenvalues), from ``dim x dim`` matrices;
    - ``samples``: with ``A``, ``B`` the centred sets, ``S_a S_b`` has the non-zero
      eigenvalues of ``M M^T``, ``M = A B^T / sqrt((n_a - 1)(n_b - 1))``, so the trace is the
      sum of ``M``'s singular values: an ``n_a x n_b`` matrix, cheaper when a set has fewer
      images than dimensions;
    - ``auto``: the smaller of the two.
    """
    _np()
    a64, b64 = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a64.ndim == b64.ndim == 2 and a64.shape[1] == b64.shape[1], "[n, dim] arrays"
    assert len(a64) >= 2 and len(b64) >= 2, "a covariance needs at least 2 images per set"
    mu_a, mu_b = a64.mean(0), b64.mean(0)
    ca, cb = a64 - mu_a, b64 - mu_b
    tr_a, tr_b = (ca * ca).sum() / (len(ca) - 1), (cb * cb).sum() / (len(cb) - 1)
    if method == "auto":
        method = "samples" if min(len(ca), len(cb)) < a64.shape[1] else "dim"
    if method == "samples":
        m = (ca @ cb.T) / np.sqrt((len(ca) - 1) * (len(cb) - 1))
        tr_sqrt = float(np.linalg.svd(m, compute_uv=False).sum())
    elif method == "dim":
        cov_a = ca.T @ ca / (len(ca) - 1)
        cov_b = cb.T @ cb / (len(cb) - 1)
        w, v = np.linalg.eigh(cov_a)
        root_a = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
        m = root_a @ cov_b @ root_a
        eig = np.linalg.eigvalsh((m + m.T) / 2)
        tr_sqrt = float(np.sqrt(np.clip(eig, 0, None)).sum())
    else:
        raise ValueError(f"method is auto, dim or samples, not {method!r}")
    diff = mu_a - mu_b
    return float(diff @ diff + tr_a + tr_b - 2 * tr_sqrt)


def _blocks(n: int, rows: int = BLOCK_ROWS) -> Iterator[slice]:
    for start in range(0, n, rows):
        yield slice(start, min(n, start + rows))


def _euclidean(x: Any, y: Any, xx: Any, yy: Any) -> Any:
    """Euclidean distances as sklearn computes them for float32 input (squared distances
    in float64, rounded to float32, clipped at 0, square root), so that the ball tests
    below round the way the ``prdc`` package does."""
    d2 = (xx[:, None] - 2 * (x @ y.T) + yy[None, :]).astype(np.float32)
    return np.sqrt(np.maximum(d2, 0, out=d2), out=d2)


def _kth_neighbour_radii(x: Any, k: int) -> Any:
    """Distance of each row of ``x`` to its k-th nearest other row (itself excluded:
    the (k+1)-th smallest distance, the row's own 0 counted first)."""
    xx = (x * x).sum(1)
    radii = np.empty(len(x), np.float32)
    for s in _blocks(len(x)):
        d = _euclidean(x[s], x, xx[s], xx)
        d[np.arange(d.shape[0]), np.arange(s.start, s.stop)] = 0  # as sklearn: X is Y
        radii[s] = np.partition(d, k, axis=1)[:, k]
    return radii


def prdc(real: Any, fake: Any, k: int = 5) -> dict[str, float]:
    """Precision, recall, density and coverage of ``fake`` against ``real`` (Naeem et al.
    2020), with k-nearest-neighbour balls in Euclidean distance between embeddings (for
    unit vectors ``sqrt(2 * DreamSim distance)``: the same neighbours and balls).

    - precision: share of fake images inside at least one real image's ball;
    - recall: share of real images inside at least one fake image's ball;
    - density: mean over fake images of the number of real balls containing it, over k;
    - coverage: share of real images whose ball contains at least one fake image.
    """
    _np()
    real64, fake64 = np.asarray(real, np.float64), np.asarray(fake, np.float64)
    assert len(real64) > k and len(fake64) > k, f"each set needs more than k={k} images"
    r_real = _kth_neighbour_radii(real64, k)
    r_fake = _kth_neighbour_radii(fake64, k)
    rr, ff = (real64 * real64).sum(1), (fake64 * fake64).sum(1)
    inside = np.zeros(len(fake64), np.int64)  # real balls holding each fake image
    recalled = np.zeros(len(real64), bool)
    covered = np.zeros(len(real64), bool)
    for s in _blocks(len(real64)):
        d = _euclidean(real64[s], fake64, rr[s], ff)  # [real block, fake]
        in_real_ball = d < r_real[s, None]
        inside += in_real_ball.sum(0)
        covered[s] = d.min(1) < r_real[s]
        recalled[s] = (d < r_fake[None, :]).any(1)
    return {"precision": float((inside > 0).mean()), "recall": float(recalled.mean()),
            "density": float(inside.mean() / k), "coverage": float(covered.mean())}


def vendi_score(x: Any) -> float:
    """``exp(-sum(l * log l))`` over the eigenvalues ``l`` of ``K / n``, with ``K[i, j] =
    x_i @ x_j`` (the cosine similarity, ``1 - DreamSim distance``; 1 on the diagonal):
    the effective number of distinct images, from 1 (all alike) to n.

    With more images than dimensions it is computed from the ``dim x dim`` matrix
    ``x.T @ x / n``, whose non-zero eigenvalues are those of ``K / n`` (vendi-score's
    ``score_dual``), so 10^5 images cost no n x n matrix; with fewer, from ``K / n``.
    """
    _np()
    x64 = np.asarray(x, np.float64)
    norms = np.linalg.norm(x64, axis=1, keepdims=True)
    x64 = x64 / np.where(norms > 0, norms, 1)  # vendi-score normalises rows too
    gram = x64 @ x64.T if len(x64) < x64.shape[1] else x64.T @ x64
    eig = np.linalg.eigvalsh(gram / len(x64))
    p = eig[eig > 0]
    return float(np.exp(-(p * np.log(p)).sum()))


def mean_pairwise_distance(x: Any) -> float:
    """Mean of ``1 - x_i @ x_j`` over the pairs ``i != j``: from ``|sum x|^2`` in O(n dim)."""
    _np()
    x64 = np.asarray(x, np.float64)
    n = len(x64)
    assert n >= 2, "a pairwise distance needs at least 2 images"
    total = x64.sum(0)
    off_diagonal = total @ total - (x64 * x64).sum()
    return float(1 - off_diagonal / (n * (n - 1)))


def nearest_distances(x: Any, y: Any | None = None) -> Any:
    """DreamSim distance of each row of ``x`` to its nearest row of ``y`` (``y`` None:
    to its nearest other row of ``x``)."""
    _np()
    same = y is None
    y = x if y is None else y
    out = np.empty(len(x), np.float64)
    for s in _blocks(len(x)):
        sims = x[s] @ y.T
        if same:
            sims[np.arange(sims.shape[0]), np.arange(s.start, s.stop)] = -np.inf
        out[s] = 1 - sims.max(1).astype(np.float64)
    return out


METRIC_NAMES = ("frechet_distance", "precision", "recall", "density", "coverage",
                "vendi_a", "vendi_b", "mean_pairwise_distance_a", "mean_pairwise_distance_b")


def all_metrics(a: Any, b: Any, k: int = 5) -> dict[str, float]:
    """Every metric of ``compare``: ``a`` the generated set, ``b`` the reference set."""
    out = {"frechet_distance": frechet_distance(a, b)}
    out.update(prdc(b, a, k))
    out["vendi_a"], out["vendi_b"] = vendi_score(a), vendi_score(b)
    out["mean_pairwise_distance_a"] = mean_pairwise_distance(a)
    out["mean_pairwise_distance_b"] = mean_pairwise_distance(b)
    return out


def replicate_indices(seed: int, replicate: int, n_a: int, n_b: int) -> tuple[Any, Any]:
    """The resampled rows of one bootstrap replicate: deterministic in (seed, replicate),
    so that a resumed run draws what the interrupted one would have."""
    rng = _np().random.default_rng([seed, replicate])
    return rng.integers(0, n_a, n_a), rng.integers(0, n_b, n_b)


def bootstrap(a: Any, b: Any, *, replicates: int, seed: int = 0, k: int = 5,
              done: dict[int, dict[str, float]] | None = None,
              on_replicate: Callable[[int, dict[str, float]], None] | None = None
              ) -> dict[int, dict[str, float]]:
    """Metrics of ``replicates`` bootstrap resamples (each set resampled with replacement,
    to its own size); ``done`` holds replicates already computed (resuming), and
    ``on_replicate`` is called with each new one as it completes."""
    out = dict(done or {})
    for r in range(replicates):
        if r in out:
            continue
        ia, ib = replicate_indices(seed, r, len(a), len(b))
        out[r] = all_metrics(a[ia], b[ib], k)
        if on_replicate is not None:
            on_replicate(r, out[r])
    return out


def interval(values: list[float], confidence: float) -> tuple[float, float]:
    """The percentile interval holding ``confidence`` of the bootstrap values."""
    _np()
    tail = (1 - confidence) / 2 * 100
    lo, hi = np.percentile(np.asarray(values, np.float64), [tail, 100 - tail])
    return float(lo), float(hi)
