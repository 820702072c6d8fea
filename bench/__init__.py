"""``make bench``: DreamSim end to end against the upstream package, in one run.

``python -m bench.run --help`` lists the knobs; ``bench/run.py`` says what is measured and
which module holds each piece. The other ``python -m bench.<name>`` scripts each answer one
question (batching, pipelining, compile, decode modes, CPU threads, the transformer alone)
and share ``settings``, ``machine``, ``http_client`` and ``concurrency`` with it.
"""
