"""``make bench``: DreamSim end to end against the upstream package, in one run.

``python -m bench.run --help`` lists the knobs; ``bench/run.py`` says what is measured and
which module holds each piece (``components``, ``end_to_end``, ``concurrency``,
``upstream``, ``http_client``, ``report``, with ``settings`` and ``machine``). Beside it, the
figures the docs report: ``transformer_alone``, ``variants``, ``worst_case`` (with
``connection_floods``), ``client_throughput``, ``nearest`` and ``gpu_check``. The
one-question studies (batching, pipelining, compile, decode modes, CPU threads, fairness,
spreading, the evaluation's spread) are under ``bench/studies/``. What tests and benchmarks
share (process start-ups, checkpoints, images, stand-ins) is in ``testing/``.
"""
