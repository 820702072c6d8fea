"""A misbehaving gRPC v2 predictor, for faults the real one cannot be made to show.

FAKE, on purpose: the real predictor never answers slowly on demand, with a wrong shape or
with NaNs. This one speaks the same KServe v2 gRPC protocol and does exactly that, so the
transformer's handling of each fault can be tested. Everything else uses the real one.

It can also record what it receives (``record``: a file that gets one BLAKE2b digest per
image tensor), so that a benchmark can check that two transformers sent the same bytes.
"""

from __future__ import annotations

import asyncio
import hashlib
import socket
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import numpy as np
from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc as pb_grpc

from testing.procs import free_port, python_cmd, running


class _Servicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, behaviour: str, delay_s: float, record: str = "") -> None:
        self.behaviour = behaviour
        self.delay_s = delay_s
        self.record = record

    async def ServerReady(self, request, context):  # noqa: N802 (gRPC naming)
        return pb.ServerReadyResponse(ready=True)

    async def ModelReady(self, request, context):  # noqa: N802
        return pb.ModelReadyResponse(ready=True)

    async def ModelInfer(self, request, context):  # noqa: N802
        n = request.inputs[0].shape[0]
        print(f"infer images={n}", flush=True)  # counted by the load-spreading tests
        if self.record and n:
            raw = request.raw_input_contents[0]
            size = len(raw) // n
            with open(self.record, "a") as f:
                f.writelines(hashlib.blake2b(raw[i * size:(i + 1) * size],
                                             digest_size=16).hexdigest() + "\n"
                             for i in range(n))
        await asyncio.sleep(self.delay_s)
        if self.behaviour == "wrong-shape":
            out = np.ones((max(1, n - 1), 768), np.float32)
        elif self.behaviour == "nan":
            out = np.full((n, 768), np.nan, np.float32)
        else:
            out = np.full((n, 768), 1 / np.sqrt(768), np.float32)
        tensor = pb.ModelInferResponse.InferOutputTensor(name="embedding", datatype="FP32",
                                                         shape=list(out.shape))
        parameters = {}
        if self.behaviour == "described":  # what /embed needs to answer: variant and size
            parameters = {"model_type": pb.InferParameter(string_param="fake"),
                          "embedding_dim": pb.InferParameter(int64_param=768)}
        return pb.ModelInferResponse(model_name="dreamsim", id=request.id, outputs=[tensor],
                                     raw_output_contents=[out.tobytes()],
                                     parameters=parameters)


async def _serve(port: int, behaviour: str, delay_s: float, record: str = "") -> None:
    server = grpc.aio.server()
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(_Servicer(behaviour, delay_s, record),
                                                       server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


@contextmanager
def fake_predictor(behaviour: str = "ok", delay_s: float = 0.0, *,
                   log_path: Path | None = None, record: Path | None = None) -> Iterator[str]:
    """Run the fake as its own process on 127.0.0.1; yields ``host:port`` once it answers.
    Its output (a line ``infer images=N`` per call) goes to ``log_path`` when given. With
    ``record``, it appends a digest line per image it receives to that file."""
    port = free_port()
    cmd = python_cmd("testing.fake_predictor", str(port), behaviour, str(delay_s),
                     str(record or ""))
    with tempfile.TemporaryDirectory() as tmp:
        with running(cmd, log_path=log_path or Path(tmp) / "fake.log") as proc:
            deadline = time.monotonic() + 30
            while not _listening(port):
                assert proc.poll() is None and time.monotonic() < deadline, "fake did not start"
                time.sleep(0.1)
            yield f"127.0.0.1:{port}"


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


if __name__ == "__main__":
    asyncio.run(_serve(int(sys.argv[1]), sys.argv[2], float(sys.argv[3]),
                       sys.argv[4] if len(sys.argv) > 4 else ""))
