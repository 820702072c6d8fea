"""``python -m bench.gpu_check_predictor_cpu``: the predictor's CPU cost per image, GPU aside.

Sizes the predictor pod's CPUs for a GPU deployment: at the goal of 10,000 images/s the
predictor receives about 1.5 GB/s of gRPC input, and everything but the model runs on its
CPUs: gRPC receive and protobuf parsing, KServe's request handling, the batcher, the copy
into the staging buffer, the answer. This runs the real predictor server (KServe's REST
and our gRPC server, ``DreamSimPredictor.predict``, the ``MicroBatcher`` with two batches
in flight) with the GPU replaced by a stand-in runner that does the host side of
``StagedRunner.run`` (the copy of every image into a staging buffer) and returns zero
embeddings: it stands in for a GPU, taking no device time. Clients in another process
send 60-image gRPC calls (a 30-pair request) for ``--seconds``; the server's CPU seconds
(``/proc/<pid>/stat``) per image is the figure: cores needed = rate x CPU seconds per
image.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

DIM = 768


def serve(http_port: int, grpc_port: int) -> int:
    """The predictor server with the stand-in runner (runs in its own process)."""
    from kserve import model_server as kserve_model_server

    from predictor.batching import MicroBatcher
    from predictor.grpc_server import PredictorModelServer, connection_age_options
    from predictor.server import DreamSimPredictor
    from predictor.settings import PredictorSettings

    class StagingOnly:
        """Stands in for the GPU runner: the host copy into staging, zero embeddings."""

        def __init__(self, max_batch: int) -> None:
            self.staging = np.empty((max_batch, 3, 224, 224), np.uint8)

        def run(self, parts: list[np.ndarray]) -> np.ndarray:
            n = 0
            for p in parts:
                for start in range(0, len(p), len(self.staging)):
                    piece = p[start : start + len(self.staging)]
                    self.staging[: len(piece)] = piece
                n += len(p)
            return np.zeros((n, DIM), np.float32)

    class StubPredictor(DreamSimPredictor):
        def load(self) -> bool:
            s = self.settings
            self.loaded = SimpleNamespace(  # type: ignore[assignment]
                embedder=SimpleNamespace(embedding_dim=DIM))
            self._runner = StagingOnly(s.batch_size_limit)  # type: ignore[assignment]
            self._batcher = MicroBatcher(self._embed, max_images=s.batch_size_limit,
                                         max_wait_s=s.batch_max_wait_ms / 1000,
                                         combine=True, max_in_flight=2)
            self.ready = True
            return True

        def describe(self) -> dict[str, Any]:
            return {"device": "cuda", "model_type": "stub", "precision": "fp16",
                    "embedding_dim": DIM, "model_id": "stub"}

    settings = PredictorSettings(device="cpu")
    kserve_model_server.args = kserve_model_server.parser.parse_args([])
    for flag in ("grpc_max_receive_message_length", "grpc_max_send_message_length"):
        setattr(kserve_model_server.args, flag, settings.grpc_message_limit())
    model = StubPredictor("dreamsim", settings)
    model.load()
    PredictorModelServer(http_port=http_port, grpc_port=grpc_port, workers=1,
                         grpc_options=connection_age_options(0, 0)).start([model])
    return 0


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(*, clients: int, seconds: float, images_per_call: int) -> dict[str, Any]:
    import grpc
    from kserve import InferInput, InferRequest
    from kserve.protocol.grpc.grpc_predict_v2_pb2_grpc import GRPCInferenceServiceStub

    from testing.procs import free_port, python_cmd, running, wait_http_ok

    http_port, grpc_port = free_port(), free_port()
    env = {"PYTHONPATH": str(Path.cwd()), "LOG_LEVEL": "WARNING"}
    log = Path(tempfile.gettempdir()) / f"gpu_check_predictor_cpu-{os.getpid()}.log"
    cmd = python_cmd("bench.gpu_check_predictor_cpu", "--serve", str(http_port), str(grpc_port))
    with running(cmd, env=env, log_path=log, own_session=True) as proc:
        wait_http_ok(f"http://127.0.0.1:{http_port}/v2/health/ready", timeout_s=120,
                     proc=proc, log_path=log)
        batch = np.random.default_rng(0).integers(0, 256, (images_per_call, 3, 224, 224),
                                                  dtype=np.uint8)
        tensor = InferInput(name="image", shape=list(batch.shape), datatype="UINT8")
        tensor.set_data_from_numpy(batch, binary_data=True)
        message = InferRequest(model_name="dreamsim", infer_inputs=[tensor]).to_grpc()
        done = [0] * clients
        stop = time.monotonic() + seconds + 1

        def client(i: int) -> None:
            channel = grpc.insecure_channel(
                f"127.0.0.1:{grpc_port}", options=[("grpc.max_send_message_length", -1),
                                                   ("grpc.max_receive_message_length", -1)])
            stub = GRPCInferenceServiceStub(channel)
            stub.ModelInfer(message, timeout=60)  # connect and warm up
            while time.monotonic() < stop:
                stub.ModelInfer(message, timeout=60)
                done[i] += 1
            channel.close()

        threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
        for t in threads:
            t.start()
        time.sleep(1)  # every client connected and sending
        calls0, cpu0, wall0 = sum(done), _cpu_seconds(proc.pid), time.perf_counter()
        time.sleep(seconds)
        calls1, cpu1, wall1 = sum(done), _cpu_seconds(proc.pid), time.perf_counter()
        for t in threads:
            t.join()
    images = (calls1 - calls0) * images_per_call
    cpu_per_image = (cpu1 - cpu0) / images
    return {"clients": clients, "images_per_call": images_per_call,
            "images": images, "images_per_s": round(images / (wall1 - wall0), 1),
            "server_cpu_s_per_image": cpu_per_image,
            "gb_per_s_in": round(images * batch[0].nbytes / (wall1 - wall0) / 1e9, 3),
            "cores_at_10000_images_per_s": round(10_000 * cpu_per_image, 2),
            "machine_load": os.getloadavg()[0]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu_check_predictor_cpu",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--images-per-call", type=int, default=60)
    parser.add_argument("--serve", nargs=2, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        return serve(*args.serve)
    print(json.dumps(measure(clients=args.clients, seconds=args.seconds,
                             images_per_call=args.images_per_call)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
