"""The README's API examples, extracted from the README and run against the real service
(``service_url``: predictor and transformer processes on loopback) with real photographs
of ordinary camera sizes (a 5 MB PNG among them): what a new user pastes must work.

A block is run when the README marks it with ``<!-- readme-example: shell -->`` or
``<!-- readme-example: python -->`` on the line before its fence; the one change made to
it is the service's address (``localhost:8080`` -> the test service's).
"""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from testing.images import distinct_images
from testing.procs import REPO_ROOT

pytestmark = pytest.mark.slow

_BLOCK = re.compile(r"<!-- readme-example: (shell|python) -->\n```(?:bash|python)\n(.*?)```",
                    re.DOTALL)


def readme_examples() -> list[tuple[str, str]]:
    """``(kind, code)`` of every marked block, in README order."""
    return _BLOCK.findall((REPO_ROOT / "README.md").read_text())


def _camera_photo(size: tuple[int, int], seed: int) -> Image.Image:
    """A photograph at a camera's size: scikit-image's astronaut, upscaled, with sensor
    noise (so that PNG cannot compress it away: about 5 MB at 1800x1350)."""
    from skimage import data

    rng = np.random.default_rng(seed)
    upscaled = Image.fromarray(data.astronaut()).resize(size, Image.Resampling.BICUBIC)
    base = np.asarray(upscaled, np.int16)
    noisy = np.clip(base + rng.normal(0, 6, base.shape), 0, 255).astype(np.uint8)
    return Image.fromarray(noisy)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The files the examples name: reference.png, generated.jpg, gen_00..29.png, photos/."""
    work = tmp_path_factory.mktemp("readme")
    _camera_photo((1800, 1350), 0).save(work / "reference.png")
    _camera_photo((1800, 1350), 1).save(work / "generated.jpg", quality=95)
    small = distinct_images(3, size=320)
    for i in range(30):  # three distinct candidates, each given ten times
        (work / f"gen_{i:02d}.png").write_bytes(small[i % 3])
    (work / "photos").mkdir()
    for i, data in enumerate(small):
        Image.open(io.BytesIO(data)).convert("RGB").save(work / "photos" / f"p{i}.jpg")
    return work


def _json_values(text: str) -> list[Any]:
    """The JSON values curl printed one after the other (curl adds no newline)."""
    decoder, values, pos = json.JSONDecoder(), [], 0
    while (pos := len(text) - len(text[pos:].lstrip())) < len(text):
        value, pos = decoder.raw_decode(text, pos)
        values.append(value)
    return values


def _pointed_at(code: str, url: str) -> str:
    return code.replace("http://localhost:8080", url).replace(
        "localhost:8080", url.removeprefix("http://"))


def test_the_readme_marks_its_examples() -> None:
    kinds = [kind for kind, _ in readme_examples()]
    assert kinds.count("shell") >= 1 and kinds.count("python") >= 2, kinds


def test_shell_examples_work_for_a_5_mb_photo(service_url: str, workdir: Path) -> None:
    assert (workdir / "reference.png").stat().st_size > 4_000_000  # over any shell argument
    assert shutil.which("curl"), "curl is needed for the README's shell examples"
    for kind, code in readme_examples():
        if kind != "shell":
            continue
        proc = subprocess.run(["bash", "-euo", "pipefail", "-c", _pointed_at(code, service_url)],
                              cwd=workdir, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        answers = _json_values(proc.stdout)
        similarity = [a for a in answers if "scores" in a]
        assert similarity and similarity[0]["scores"][0]["pair_id"] == "p1", proc.stdout[:2000]
        assert 0 < similarity[0]["scores"][0]["distance"] < 2
        assert any(a.get("status") == "healthy" for a in answers), proc.stdout[:2000]


def test_python_examples_run(service_url: str, workdir: Path, tmp_path: Path) -> None:
    # The batch example sends its reference 30 times: a 1 MB photo (30 of them stay under
    # MAX_REQUEST_BODY_MB, as the README says), not the 5 MB one of the shell example.
    for item in workdir.iterdir():
        (shutil.copytree if item.is_dir() else shutil.copy)(item, tmp_path / item.name)
    _camera_photo((800, 600), 2).save(tmp_path / "reference.png")
    outputs = []
    for kind, code in readme_examples():
        if kind != "python":
            continue
        proc = subprocess.run([sys.executable, "-c", _pointed_at(code, service_url)],
                              cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        outputs.append(proc.stdout)
    scores = [line.split() for line in outputs[0].splitlines()]
    assert [int(s[0]) for s in scores] == list(range(30))
    # the ten copies of each candidate score alike: same bytes, same distance
    assert len({s[1] for s in scores}) == 3
    n, rest = outputs[1].split(" ", 1)
    shape, rest = rest.split(") ", 1)
    distance = float(rest.split(" ", 1)[0])
    assert n == "3" and shape.startswith("(3,"), outputs[1]
    # the embedding example's distance is the service's own /similarity distance
    photos = sorted((tmp_path / "photos").glob("*.jpg"))
    pair = {"reference_image": base64.b64encode(photos[0].read_bytes()).decode(),
            "generated_image": base64.b64encode(photos[1].read_bytes()).decode()}
    r = httpx.post(f"{service_url}/similarity", json={"pairs": [pair]}, timeout=120)
    assert abs(r.json()["scores"][0]["distance"] - distance) < 1e-4  # printed to 4 places
