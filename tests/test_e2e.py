"""End to end: the public API of a running service.

As a script (the original client CLI, kept unchanged)::

    python tests/test_e2e.py --url http://localhost:8080              # smoke check
    python tests/test_e2e.py --url http://localhost:8080 --benchmark  # 1, 10, 30, 100 pairs

As tests: predictor and transformer as separate real processes on loopback, wired by
``--predictor_host`` / ``--predictor_protocol grpc-v2``; 30 pairs mixing base64, data URIs
and URLs from a local HTTP server; distances equal the upstream package's.
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

if not __package__:  # run as a script (``python tests/test_e2e.py``): find ``testing/``
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from testing.images import b64, check_response, distinct_images  # noqa: E402

BATCHES = (1, 10, 30, 100)


def run_benchmark(url: str, *, repeats: int = 3, timeout: float = 600) -> list[tuple[int, float]]:
    """Median wall time of one request per batch size; prints a table."""
    images = distinct_images(2 * max(BATCHES))
    print(f"benchmark against {url}: distinct 512x384 PNG/JPEG images, base64, "
          f"median of {repeats}")
    print(f"{'pairs':>6} {'time (s)':>10} {'per pair (ms)':>14} {'server (ms)':>12}")
    results = []
    with httpx.Client(timeout=timeout) as client:
        for n in BATCHES:
            pairs = [{"reference_image": b64(images[2 * i]),
                      "generated_image": b64(images[2 * i + 1]), "pair_id": str(i)}
                     for i in range(n)]
            times, server = [], []
            for _ in range(repeats):
                t0 = time.perf_counter()
                r = client.post(f"{url}/similarity", json={"pairs": pairs})
                times.append(time.perf_counter() - t0)
                r.raise_for_status()
                check_response(r.json(), pairs)
                server.append(r.json()["processing_time_ms"])
            t = statistics.median(times)
            results.append((n, t))
            print(f"{n:>6} {t:>10.3f} {1000 * t / n:>14.1f} {statistics.median(server):>12.1f}")
    return results


def smoke(url: str) -> None:
    with httpx.Client(timeout=120) as client:
        health = client.get(f"{url}/health")
        print("health:", health.status_code, health.json())
        img = distinct_images(2)
        pairs = [{"reference_image": b64(img[0]), "generated_image": b64(img[1]), "pair_id": "a"},
                 {"reference_image": b64(img[0]), "generated_image": b64(img[0]), "pair_id": "b"}]
        r = client.post(f"{url}/similarity", json={"pairs": pairs})
        r.raise_for_status()
        check_response(r.json(), pairs)
        assert r.json()["scores"][1]["distance"] == 0
        print("similarity:", r.json())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://localhost:8080", help="the service's base URL")
    parser.add_argument("--benchmark", action="store_true",
                        help="time batches of 1, 10, 30 and 100 pairs")
    parser.add_argument("--repeats", type=int, default=3, help="requests per batch size")
    args = parser.parse_args(argv)
    url = args.url.rstrip("/")
    smoke(url)
    if args.benchmark:
        run_benchmark(url, repeats=args.repeats)
    return 0


# --- tests ---------------------------------------------------------------------------------

if "pytest" in sys.modules:
    import pytest
    import torch

    from testing.checkpoints import cached_upstream_dreamsim
    from testing.http_host import ImageHost

    @pytest.mark.slow
    def test_30_pairs_mixed_inputs_match_upstream(service_url: str, image_host: ImageHost,
                                                  dino_weights_dir: Path) -> None:
        images = distinct_images(40, size=448)
        # Each pair uses one of three input forms per side; some images repeat, as
        # one reference against several generated images does in practice.
        forms = ["base64", "datauri", "url"]
        pairs, sides = [], []
        for i in range(30):
            a, b = images[i], images[(i * 7 + 3) % 40]
            if i % 10 == 9:
                b = a  # identical pair: distance 0
            entry: dict[str, str] = {}
            for field, img, k in (("reference_image", a, i), ("generated_image", b, i + 1)):
                form = forms[k % 3]
                if form == "base64":
                    entry[field] = b64(img)
                elif form == "datauri":
                    mime = "png" if img[:4] == b"\x89PNG" else "jpeg"
                    entry[field] = f"data:image/{mime};base64,{b64(img)}"
                else:
                    entry[field] = image_host.add(f"e2e-{i}-{field}.img", img)
            entry["pair_id"] = f"pair-{i}"
            pairs.append(entry)
            sides.append((a, b))

        r = httpx.post(f"{service_url}/similarity", json={"pairs": pairs}, timeout=300)
        assert r.status_code == 200, r.text
        body = r.json()
        check_response(body, pairs)

        model, preprocess = cached_upstream_dreamsim(dino_weights_dir, "dino_vitb16")
        with torch.no_grad():
            xa = torch.cat([preprocess(Image.open(io.BytesIO(a))) for a, _ in sides])
            xb = torch.cat([preprocess(Image.open(io.BytesIO(b))) for _, b in sides])
            expected = model(xa, xb).double().numpy()
        got = np.array([s["distance"] for s in body["scores"]])
        worst = float(np.abs(got - expected).max())
        print(f"\n30 pairs end to end: max |service - upstream| = {worst:.2e}, "
              f"processing_time_ms = {body['processing_time_ms']:.0f}")
        assert worst < 1e-5
        assert all(body["scores"][i]["distance"] == 0 for i in (9, 19, 29))

    def test_cli_smoke_and_benchmark_against_running_service(
            service_url: str, capsys: pytest.CaptureFixture[str],
            monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(sys.modules[__name__], "BATCHES", (1, 2))
        assert main(["--url", service_url, "--benchmark", "--repeats", "1"]) == 0
        out = capsys.readouterr().out
        assert "'model_loaded': True" in out
        assert out.count("\n") >= 5 and "per pair" in out


if __name__ == "__main__":
    sys.exit(main())
