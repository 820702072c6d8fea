"""Nearest references by DreamSim distance: exact blockwise search with numpy matrix
products (BLAS), or faiss (an exact inner-product index, or an approximate IVF one).

Embeddings have unit norm, so the nearest reference is the one with the largest inner
product and its distance is ``1 - q @ r``. Every engine returns candidates only; the
distances reported are recomputed in float64 from the two embeddings, so they are exact
(``1 - dot`` of the ``/embed`` vectors) whichever engine found them. The approximate index
may miss a neighbour, never report a wrong distance.

Queries are searched in blocks and each block's results are yielded as soon as they are
known, so that the caller can write them as it goes.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from .extras import require

# Exact numpy search up to this many references; faiss's exact index above (issue 20:
# BLAS products are as fast up to about 10^6, faiss holds larger sets with less memory
# traffic per query block).
NUMPY_MAX_REFERENCES = 1_000_000
QUERY_BLOCK = 1024  # queries per search step (and per write of OUT)
SIMS_BLOCK_ELEMENTS = 1 << 24  # 64 MB of float32 similarities per product at most


@dataclass
class Hits:
    """One query's results: ``k`` nearest (indices into the references, distances
    ascending) and every reference under the threshold (up to ``max_matches``)."""

    indices: list[int]
    distances: list[float]
    under: list[tuple[int, float]] = field(default_factory=list)  # (index, distance)
    under_count: int = 0


def choose_engine(engine: str, n_references: int) -> str:
    """``auto``: numpy up to :data:`NUMPY_MAX_REFERENCES` references, faiss above."""
    if engine != "auto":
        return engine
    return "numpy" if n_references <= NUMPY_MAX_REFERENCES else "faiss"


class Searcher:
    """k-nearest and threshold search of queries against fixed references.

    Args:
        references: float32 ``[n, dim]`` unit-norm embeddings.
        engine: ``numpy`` (exact, blockwise), ``faiss`` (exact ``IndexFlatIP``),
            ``faiss-ivf`` (approximate ``IndexIVFFlat``: ``nlist`` cells, ``nprobe``
            searched per query) or ``auto``.
    """

    def __init__(self, references: Any, *, engine: str = "auto", nlist: int | None = None,
                 nprobe: int = 16) -> None:
        self.np = np = require("numpy", "nearest-neighbour search")
        self.refs = np.ascontiguousarray(references, np.float32)
        self.engine = choose_engine(engine, len(self.refs))
        self.index: Any = None
        if self.engine in ("faiss", "faiss-ivf"):
            faiss = require("faiss", f"the {self.engine} engine")
            dim = self.refs.shape[1]
            if self.engine == "faiss":
                self.index = faiss.IndexFlatIP(dim)
            else:
                cells = nlist or max(1, min(len(self.refs) // 39, int(4 * len(self.refs) ** 0.5)))
                quantizer = faiss.IndexFlatIP(dim)
                self.index = faiss.IndexIVFFlat(quantizer, dim, cells,
                                                faiss.METRIC_INNER_PRODUCT)
                self.index.train(self.refs)
                self.index.nprobe = min(nprobe, cells)
                self._quantizer = quantizer  # the index does not own it in Python
            self.index.add(self.refs)
        elif self.engine != "numpy":
            raise ValueError(f"unknown engine {engine!r} (auto, numpy, faiss, faiss-ivf)")

    def _candidates_numpy(self, q: Any, k: int, threshold: float | None
                          ) -> tuple[Any, list[list[tuple[Any, Any]]]]:
        np = self.np
        n = len(self.refs)
        kk = min(k, n)
        best_sims = np.full((len(q), kk), -np.inf, np.float32)
        best_idx = np.zeros((len(q), kk), np.int64)
        under: list[list[tuple[Any, Any]]] = [[] for _ in range(len(q))]
        step = max(kk, SIMS_BLOCK_ELEMENTS // max(1, len(q)))
        for start in range(0, n, step):
            sims = q @ self.refs[start:start + step].T  # [queries, block]
            if threshold is not None:
                rows, cols = np.nonzero(sims > 1 - threshold - 1e-5)  # refined in float64
                for row in np.unique(rows):
                    sel = cols[rows == row]
                    under[row].append((sel + start, sims[row, sel]))
            take = min(kk, sims.shape[1])
            part = np.argpartition(-sims, take - 1, axis=1)[:, :take]
            cand_sims = np.concatenate([best_sims, np.take_along_axis(sims, part, 1)], 1)
            cand_idx = np.concatenate([best_idx, part + start], 1)
            keep = np.argpartition(-cand_sims, kk - 1, axis=1)[:, :kk]
            best_sims = np.take_along_axis(cand_sims, keep, 1)
            best_idx = np.take_along_axis(cand_idx, keep, 1)
        return best_idx, under

    def _candidates_faiss(self, q: Any, k: int, threshold: float | None
                          ) -> tuple[Any, list[list[tuple[Any, Any]]]]:
        np = self.np
        _, idx = self.index.search(q, min(k, len(self.refs)))
        under: list[list[tuple[Any, Any]]] = [[] for _ in range(len(q))]
        if threshold is not None:
            lims, sims, ids = self.index.range_search(q, float(1 - threshold - 1e-5))
            for row in range(len(q)):
                sel = slice(lims[row], lims[row + 1])
                under[row].append((ids[sel].astype(np.int64), sims[sel]))
        return idx, under

    def search(self, queries: Any, k: int, *, threshold: float | None = None,
               max_matches: int = 100, start: int = 0) -> Iterator[tuple[int, list[Hits]]]:
        """Yields ``(first query's position, hits of a block of queries)`` from ``start``.

        ``threshold``: also every reference with a distance under it (at most
        ``max_matches`` per query, the closest; ``under_count`` counts them all).
        """
        np = self.np
        qs = np.ascontiguousarray(queries, np.float32)
        refs64 = None
        for s in range(start, len(qs), QUERY_BLOCK):
            q = qs[s:s + QUERY_BLOCK]
            if self.engine == "numpy":
                idx, under = self._candidates_numpy(q, k, threshold)
            else:
                idx, under = self._candidates_faiss(q, k, threshold)
            q64 = q.astype(np.float64)
            hits = []
            for row in range(len(q)):
                cand = idx[row][idx[row] >= 0]  # faiss pads with -1 when it found fewer
                refs64 = self.refs[cand].astype(np.float64)
                dist = 1 - refs64 @ q64[row]
                order = np.lexsort((cand, dist))
                h = Hits([int(i) for i in cand[order]], [float(d) for d in dist[order]])
                if threshold is not None and under[row]:
                    u_idx = np.unique(np.concatenate([i for i, _ in under[row]]))
                    u_dist = 1 - self.refs[u_idx].astype(np.float64) @ q64[row]
                    keep = u_dist < threshold
                    u_idx, u_dist = u_idx[keep], u_dist[keep]
                    order = np.lexsort((u_idx, u_dist))[:max_matches]
                    h.under = [(int(u_idx[i]), float(u_dist[i])) for i in order]
                    h.under_count = int(keep.sum())
                hits.append(h)
            yield s, hits
