"""Each component alone: the transformer's decoding (in process), the predictor's model
(in process), and the predictor over gRPC v2."""

from __future__ import annotations

import gc
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from bench.http_client import BenchError, Deadline
from bench.settings import Settings
from testing.photos import BenchImage


def measure_decode(images: list[BenchImage], threads: int) -> dict[str, Any]:
    """``decode_image`` alone: images/s per format, one thread and a pool."""
    from transformer.images import decode_image

    for im in images[:4]:  # warm-up (imports, first allocations)
        decode_image(im.data)
    out: dict[str, Any] = {"images": len(images), "threads": threads}
    groups = {"jpeg": [im for im in images if im.fmt == "JPEG"],
              "png": [im for im in images if im.fmt == "PNG"], "all": images}
    with ThreadPoolExecutor(max_workers=threads) as pool:
        for name, group in groups.items():
            if not group:
                continue
            datas = [im.data for im in group]
            mpix = sum(im.width * im.height for im in group) / 1e6
            t0 = time.perf_counter()
            for d in datas:
                decode_image(d)
            single = time.perf_counter() - t0
            t0 = time.perf_counter()
            list(pool.map(decode_image, datas))
            multi = time.perf_counter() - t0
            out[name] = {"count": len(group), "single_images_per_s": len(group) / single,
                         "pool_images_per_s": len(group) / multi,
                         "single_mpix_per_s": mpix / single, "pool_mpix_per_s": mpix / multi}
    return out


def decoded(images: list[BenchImage], n: int) -> np.ndarray:
    """``n`` uint8 [3, 224, 224] inputs decoded from the images (cyclically)."""
    from transformer.images import decode_image

    base = [decode_image(im.data) for im in images[: min(n, len(images))]]
    return np.stack([base[i % len(base)] for i in range(n)])


def measure_predictor(s: Settings, batch: np.ndarray) -> dict[str, Any]:
    """``load_model`` + ``embed`` in this process: images/s at batch 1 and a full batch."""
    import torch

    from predictor.model import load_model

    loaded = load_model(cache_dir=s.weights_dir, variant=s.model_type, device=s.device_requested,
                        precision=s.precision_requested)
    embedder = loaded.embedder
    images = torch.from_numpy(batch)
    bs = min(s.batch_size_limit, len(images))
    embedder.embed(images[:bs], batch_size=bs)  # warm-up at the size measured
    embedder.embed(images[:1], batch_size=1)
    t0 = time.perf_counter()
    embedder.embed(images, batch_size=bs)
    full = time.perf_counter() - t0
    k = min(len(images), 4 if loaded.device.type == "cpu" else 32)
    t0 = time.perf_counter()
    for i in range(k):
        embedder.embed(images[i : i + 1], batch_size=1)
    one = time.perf_counter() - t0
    out = {"load_s": loaded.load_seconds, "device": loaded.device.type,
           "dtype": str(loaded.dtype).replace("torch.", ""), "batch": bs, "images": len(images),
           "batch_images_per_s": len(images) / full, "batch1_images": k,
           "batch1_images_per_s": k / one}
    return out


def free_memory() -> None:
    """Give back what an in-process model held before the next phase."""
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def measure_grpc(host: str, batch: np.ndarray, per_call: int, deadline: Deadline
                 ) -> dict[str, Any]:
    """The predictor over gRPC v2 (raw uint8 contents), one client, sequential calls."""
    import grpc
    from kserve import InferInput, InferRequest
    from kserve.protocol.grpc.grpc_predict_v2_pb2_grpc import GRPCInferenceServiceStub

    channel = grpc.insecure_channel(host, options=[("grpc.max_send_message_length", -1),
                                                   ("grpc.max_receive_message_length", -1)])
    stub = GRPCInferenceServiceStub(channel)

    def call(arr: np.ndarray) -> None:
        tensor = InferInput(name="image", shape=list(arr.shape), datatype="UINT8")
        tensor.set_data_from_numpy(np.ascontiguousarray(arr), binary_data=True)
        req = InferRequest(model_name="dreamsim", infer_inputs=[tensor], request_id="bench")
        resp = stub.ModelInfer(req.to_grpc(), timeout=min(600.0, deadline.left()))
        size = len(resp.raw_output_contents[0]) if resp.raw_output_contents else 0
        if size % (4 * len(arr)) or size == 0:
            raise BenchError(f"gRPC answer of {size} bytes for {len(arr)} images")

    try:
        call(batch[: min(per_call, len(batch))])  # warm-up at the size measured
        t0 = time.perf_counter()
        for start in range(0, len(batch), per_call):
            call(batch[start : start + per_call])
        wall = time.perf_counter() - t0
    finally:
        channel.close()
    return {"images": len(batch), "per_call": min(per_call, len(batch)),
            "images_per_s": len(batch) / wall}

