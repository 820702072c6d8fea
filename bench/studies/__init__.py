"""One-question studies: each script answers one question about a setting or a design
choice (does batching across requests pay, does torch.compile beat eager, how do calls
spread over replicas...), prints its figures and writes them under ``bench/results/``.

- ``batching``: batching across requests for many small requests.
- ``compile``: torch.compile (and CUDA graphs) against eager.
- ``cpu_threads``: torch's thread count against the predictor's, under a CPU limit.
- ``decode_modes``: what DECODE_MODE=fast costs in fidelity and buys in speed.
- ``eval_spread``: how stable ``compare``'s figures are with the set size.
- ``fairness``: a small request's time beside one of many slow URLs or costly images.
- ``model_identity``: what asking the model identity before every cached request costs.
- ``pipelining``: overlapping decoding with inference, or not.
- ``spreading``: how a transformer's calls split over predictor replicas.

The service's own benchmark (``make bench``) and the figures it reports are in ``bench/``.
"""
