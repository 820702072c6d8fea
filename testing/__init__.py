"""Support code that the tests (``tests/``) and the benchmarks (``bench/``) share.

Nothing here is product code: it starts the real servers on loopback, builds random-weight
checkpoints in the upstream layout, makes images, and stands in for what cannot run here.

- ``procs``: the one process launcher, and the predictor's and transformer's start-ups.
- ``checkpoints``: random-weight checkpoints and upstream oracles, built once and cached.
- ``photos``: real photographs at the sizes clients send (the benchmarks' corpus).
- ``images``: small distinct images, base64, the check of a ``/similarity`` answer.
- ``hostile_images``: files built to exhaust a decoder.
- ``fake_predictor``: an instant stand-in predictor over real gRPC.
- ``tcp_balancer``: a TCP proxy that spreads connections as a Service's proxy would.
- ``http_host``: the one loopback HTTP server for URL inputs and other stand-ins.

Tests and benchmarks import from here; this package imports from neither.
"""
