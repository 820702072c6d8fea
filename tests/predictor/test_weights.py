"""Tests for ``predictor.weights`` (all its modules) against a real HTTP server on loopback.

The server (``testing.http_host``'s stdlib ``ThreadingHTTPServer``, with ``Range`` support)
serves archives built here in the upstream release format
(``dreamsim.model.download_weights`` unzips them into the cache dir) and a DINO backbone
with the real 150 key names and shapes. Its tensors are views of one shared storage, which
``torch.save`` writes once, so the file is ~9 MB
instead of 344 MB; verification only reads keys and shapes.
"""

from __future__ import annotations

import io
import json
import shlex
import socket
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from safetensors.torch import save as save_safetensors

from predictor.layout import DINO_BACKBONE_FILE, DINO_HUB_FILE, DINOV2_HUB_FILE, VARIANTS
from predictor.weights import ensure_weights, fetch_command, main, sources
from predictor.weights.download import Progress
from testing.http_host import Handler as QuietHandler
from testing.http_host import serving

BACKBONE_PATH = "/dino/dino_vitbase16_pretrain.pth"
DINOV2_PATH = "/dinov2/dinov2_vitb14_pretrain.pth"
HUB_PATHS = {DINO_HUB_FILE.path: BACKBONE_PATH, DINOV2_HUB_FILE.path: DINOV2_PATH}


# --------------------------------------------------------------------------- payloads


def torch_bytes(obj: object) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def backbone_shapes() -> dict[str, tuple[int, ...]]:
    """Keys and shapes of the real dino_vitbase16_pretrain.pth (150 keys)."""
    d = 768
    shapes: dict[str, tuple[int, ...]] = {
        "cls_token": (1, 1, d),
        "pos_embed": (1, 197, d),
        "patch_embed.proj.weight": (d, 3, 16, 16),
        "patch_embed.proj.bias": (d,),
    }
    for i in range(12):
        b = f"blocks.{i}"
        shapes |= {
            f"{b}.norm1.weight": (d,),
            f"{b}.norm1.bias": (d,),
            f"{b}.attn.qkv.weight": (3 * d, d),
            f"{b}.attn.qkv.bias": (3 * d,),
            f"{b}.attn.proj.weight": (d, d),
            f"{b}.attn.proj.bias": (d,),
            f"{b}.norm2.weight": (d,),
            f"{b}.norm2.bias": (d,),
            f"{b}.mlp.fc1.weight": (4 * d, d),
            f"{b}.mlp.fc1.bias": (4 * d,),
            f"{b}.mlp.fc2.weight": (d, 4 * d),
            f"{b}.mlp.fc2.bias": (d,),
        }
    shapes |= {"norm.weight": (d,), "norm.bias": (d,)}
    assert len(shapes) == 150, "the DINO ViT-B/16 state dict has 150 keys"
    return shapes


def dinov2_shapes() -> dict[str, tuple[int, ...]]:
    """Keys and shapes of the real dinov2_vitb14_pretrain.pth (175 keys: 518 px position
    grid, mask token, layer scale)."""
    d = 768
    shapes = backbone_shapes()
    shapes |= {"pos_embed": (1, 1370, d), "patch_embed.proj.weight": (d, 3, 14, 14),
               "mask_token": (1, d)}
    for i in range(12):
        shapes |= {f"blocks.{i}.ls1.gamma": (d,), f"blocks.{i}.ls2.gamma": (d,)}
    assert len(shapes) == 175, "the DINOv2 ViT-B/14 state dict has 175 keys"
    return shapes


def backbone_bytes(shapes: dict[str, tuple[int, ...]]) -> bytes:
    """A state dict with these shapes whose tensors share one storage (saved once)."""
    largest = max(torch.Size(s).numel() for s in shapes.values())
    storage = randn(largest)
    return torch_bytes({k: storage[: torch.Size(s).numel()].view(s) for k, s in shapes.items()})


def randn(*shape: int) -> torch.Tensor:
    """Seeded, so that building an archive twice gives the same bytes."""
    return torch.randn(shape, generator=torch.Generator().manual_seed(sum(shape)))


def lora_members(lora_dir: str) -> dict[str, bytes]:
    config = {
        "peft_type": "LORA",
        "r": 16,
        "lora_alpha": 0.5,
        "lora_dropout": 0.3,
        "bias": "none",
        "target_modules": ["qkv"],
    }
    tensors = {
        f"base_model.model.blocks.{i}.attn.qkv.lora_{ab}.weight": randn(*shape)
        for i in range(2)
        for ab, shape in (("A", (16, 768)), ("B", (2304, 16)))
    }
    return {
        f"{lora_dir}/adapter_config.json": json.dumps(config, indent=2).encode(),
        f"{lora_dir}/adapter_model.safetensors": save_safetensors(tensors),
    }


def release_members(model_type: str) -> dict[str, bytes]:
    """What the upstream release zip of ``model_type`` holds (small random tensors)."""
    variant = VARIANTS[model_type]
    members = {}
    for name in variant.release_files:
        if name == variant.lora_dir:
            continue
        elif name.endswith(".pth.tar"):
            members[name] = torch_bytes({"state_dict": {"proj": randn(768, 512)}})
        else:
            members[name] = torch_bytes({"student": {"w": randn(4, 4)}})
    return members | lora_members(variant.lora_dir)


def zip_bytes(members: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as archive:
        for folder in sorted({n.rsplit("/", 1)[0] + "/" for n in members if "/" in n}):
            archive.writestr(folder, b"")
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


# ----------------------------------------------------------------------------- server


@dataclass
class Server:
    """A loopback HTTP server serving ``files`` by path, with ``Range`` support."""

    base_url: str
    files: dict[str, bytes] = field(default_factory=dict)
    # (path, Range header or None, status sent) of every request, in order
    requests: list[tuple[str, str | None, int]] = field(default_factory=list)
    # paths whose next response is cut off after half of its bytes
    drop_next: set[str] = field(default_factory=set)

    def url(self, path: str) -> str:
        return self.base_url + path

    def ranges(self, path: str) -> list[str | None]:
        return [r for p, r, _ in self.requests if p == path]


def handler_for(server: Server) -> type[QuietHandler]:
    class Handler(QuietHandler):
        def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
            data = server.files.get(self.path)
            range_header = self.headers.get("Range")
            if data is None:
                return self._reply(404, b"not found")
            start = 0
            if range_header:
                start = int(range_header.removeprefix("bytes=").split("-")[0])
                if start >= len(data):
                    return self._reply(416, b"", {"Content-Range": f"bytes */{len(data)}"})
            headers = {}
            if range_header:
                headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
            cut = self.path in server.drop_next
            server.drop_next.discard(self.path)
            self._reply(206 if range_header else 200, data[start:], headers, cut=cut)

        def _reply(
            self, status: int, body: bytes, headers: dict[str, str] | None = None, cut: bool = False
        ) -> None:
            """Send ``body`` with its full length; ``cut`` drops the connection halfway."""
            server.requests.append((self.path, self.headers.get("Range"), status))
            self.send_response(status)
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            try:
                self.wfile.write(body[: len(body) // 2] if cut else body)
            except (BrokenPipeError, ConnectionResetError):
                pass
            self.close_connection = True

    return Handler


@pytest.fixture(scope="module")
def payloads() -> dict[str, bytes]:
    shapes = backbone_shapes()
    zips = {f"/{name}.zip": zip_bytes(release_members(name)) for name in VARIANTS}
    return zips | {BACKBONE_PATH: backbone_bytes(shapes),
                   DINOV2_PATH: backbone_bytes(dinov2_shapes())}


@pytest.fixture(scope="module")
def http_server() -> Iterator[Server]:
    state = Server(base_url="")
    with serving(handler_for(state)) as state.base_url:
        yield state


@pytest.fixture
def server(http_server: Server, payloads: dict[str, bytes]) -> Server:
    http_server.files = dict(payloads)
    http_server.requests.clear()
    http_server.drop_next.clear()
    return http_server


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return tmp_path / "models"


def fetch(
    server: Server,
    cache: Path,
    model_type: str = "dino_vitb16",
    release: str | None = None,
    *extra: str,
) -> int:
    hub = VARIANTS[model_type].hub_file
    backbone = ["--backbone-url", server.url(HUB_PATHS[hub.path])] if hub else []
    return main(
        [
            "--model-type",
            model_type,
            "--cache-dir",
            str(cache),
            "--release-url",
            release or server.url(f"/{model_type}.zip"),
            *backbone,
            *extra,
        ]
    )


def leftovers(cache: Path) -> list[str]:
    """Downloads that should not outlive a run: archives and ``.part`` files."""
    return sorted(p.name for p in cache.rglob("*") if p.suffix in (".zip", ".part"))


# ------------------------------------------------------------------------------ tests


@pytest.mark.parametrize("model_type", sorted(VARIANTS))
def test_fresh_fetch_produces_upstream_layout(
    server: Server, cache: Path, model_type: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert fetch(server, cache, model_type) == 0

    variant = VARIANTS[model_type]
    for name in (*variant.required_files, *variant.release_files):
        assert (cache / name).exists(), name
    assert (cache / variant.lora_dir / "adapter_model.safetensors").is_file()
    for name, data in release_members(model_type).items():
        assert (cache / name).read_bytes() == data, name
    hub = variant.hub_file
    fetched = [p for p, _, _ in server.requests]
    if hub is None:  # CLIP, OpenCLIP, SynCLR: everything is in the release zip
        assert fetched == [f"/{model_type}.zip"]
        assert not (cache / "checkpoints").exists()
    else:
        assert fetched == [f"/{model_type}.zip", HUB_PATHS[hub.path]]
        assert (cache / hub.path).read_bytes() == server.files[HUB_PATHS[hub.path]]
    assert leftovers(cache) == []
    out = capsys.readouterr().out
    assert f"weights for {model_type} are ready in {cache}" in out


def test_second_run_skips_what_is_present(
    server: Server, cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert fetch(server, cache) == 0
    capsys.readouterr()
    server.requests.clear()

    assert fetch(server, cache) == 0

    out = capsys.readouterr().out
    assert "already present: dino_vitb16_pretrain.pth, dino_vitb16_single_lora" in out
    assert f"already present: {cache / DINO_BACKBONE_FILE}" in out
    assert server.requests == []


def test_force_refetches(server: Server, cache: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert fetch(server, cache) == 0
    server.requests.clear()

    assert fetch(server, cache, "dino_vitb16", None, "--force") == 0

    assert [p for p, _, _ in server.requests] == ["/dino_vitb16.zip", BACKBONE_PATH]
    assert "already present" not in capsys.readouterr().out


@pytest.mark.parametrize("path", ["/dino_vitb16.zip", BACKBONE_PATH])
def test_interrupted_download_resumes_with_range(
    server: Server, cache: Path, path: str, capsys: pytest.CaptureFixture[str]
) -> None:
    served = server.files[path]
    dest = cache / DINO_BACKBONE_FILE if path == BACKBONE_PATH else cache / "dino_vitb16.zip"
    part = dest.with_name(dest.name + ".part")
    server.drop_next.add(path)

    assert fetch(server, cache) == 1

    err = capsys.readouterr().err
    assert f"download of {server.url(path)} interrupted" in err
    assert "run the same command again to resume" in err
    assert "Traceback" not in err
    have = part.stat().st_size
    assert 0 < have < len(served)
    assert served.startswith(part.read_bytes())

    assert fetch(server, cache) == 0

    assert server.ranges(path) == [None, f"bytes={have}-"]
    if path == BACKBONE_PATH:
        assert dest.read_bytes() == served
    else:
        for name, data in release_members("dino_vitb16").items():
            assert (cache / name).read_bytes() == data, name
    assert leftovers(cache) == []


def test_complete_part_answered_416_is_verified_and_kept(
    server: Server, cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dest = cache / DINO_BACKBONE_FILE
    dest.parent.mkdir(parents=True)
    dest.with_name(dest.name + ".part").write_bytes(server.files[BACKBONE_PATH])

    assert fetch(server, cache) == 0

    size = len(server.files[BACKBONE_PATH])
    assert (BACKBONE_PATH, f"bytes={size}-", 416) in server.requests
    assert dest.read_bytes() == server.files[BACKBONE_PATH]


def test_corrupt_zip_is_rejected_and_removed(
    server: Server, cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = zip_bytes(release_members("dino_vitb16"), zipfile.ZIP_STORED)
    assert data.count(b'"lora_alpha"') == 1, "stored member bytes appear verbatim"
    server.files["/corrupt.zip"] = data.replace(b'"lora_alpha"', b'"lora_alphb"')

    assert fetch(server, cache, "dino_vitb16", server.url("/corrupt.zip")) == 1

    err = capsys.readouterr().err
    assert "corrupt.zip.part: corrupt archive: bad CRC" in err
    assert "'dino_vitb16_single_lora/adapter_config.json'" in err
    assert "removed it" in err
    assert leftovers(cache) == []
    assert not (cache / "dino_vitb16_single_lora").exists()


def test_zip_without_lora_dir_is_rejected(
    server: Server, cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    members = release_members("dino_vitb16")
    server.files["/nolora.zip"] = zip_bytes(
        {"dino_vitb16_pretrain.pth": members["dino_vitb16_pretrain.pth"]}
    )

    assert fetch(server, cache, "dino_vitb16", server.url("/nolora.zip")) == 1

    err = capsys.readouterr().err
    assert "archive lacks dino_vitb16_single_lora" in err
    assert leftovers(cache) == []
    assert not (cache / "dino_vitb16_pretrain.pth").exists()


def test_path_traversal_member_is_refused(
    server: Server, cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    members = release_members("dino_vitb16") | {"../evil": b"owned"}
    server.files["/evil.zip"] = zip_bytes(members)

    assert fetch(server, cache, "dino_vitb16", server.url("/evil.zip")) == 1

    err = capsys.readouterr().err
    assert "refusing archive with member(s) outside the cache dir:" in err
    assert "'../evil'" in err
    assert not (tmp_path / "evil").exists()
    assert not (cache / "evil").exists()
    assert not (cache / "dino_vitb16_pretrain.pth").exists()
    assert leftovers(cache) == []


def test_bad_backbone_is_rejected_and_removed(
    server: Server, cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shapes = backbone_shapes() | {"patch_embed.proj.weight": (384, 3, 16, 16)}  # ViT-S
    server.files[BACKBONE_PATH] = backbone_bytes(shapes)

    assert fetch(server, cache) == 1

    err = capsys.readouterr().err
    assert "dino_vitbase16_pretrain.pth.part: patch_embed.proj.weight has shape" in err
    assert "[384, 3, 16, 16], expected [768, 3, 16, 16]" in err
    assert leftovers(cache) == []
    assert not (cache / DINO_BACKBONE_FILE).exists()


def test_dino_backbone_is_not_taken_for_dinov2(
    server: Server, cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server.files[DINOV2_PATH] = server.files[BACKBONE_PATH]  # the wrong file at the URL

    assert fetch(server, cache, "dinov2_vitb14") == 1

    err = capsys.readouterr().err
    assert "dinov2_vitb14_pretrain.pth.part: pos_embed has shape [1, 197, 768]" in err
    assert "expected [1, 1370, 768]" in err
    assert leftovers(cache) == []
    assert not (cache / DINOV2_HUB_FILE.path).exists()


def test_http_error_names_the_url(
    server: Server, cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = server.url("/missing.zip")

    assert fetch(server, cache, "dino_vitb16", url) == 1

    err = capsys.readouterr().err
    assert f"error: HTTP 404 Not Found for {url}" in err
    assert "Traceback" not in err


def test_unreachable_host_says_to_download_elsewhere(
    server: Server, cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as sock:  # a port nobody listens on once closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/dreamsim_dino_vitb16_checkpoint.zip"

    assert fetch(server, cache, "dino_vitb16", url) == 1

    err = capsys.readouterr().err
    assert f"could not reach 127.0.0.1:{port}" in err
    assert f"this machine may have no internet access: download {url} elsewhere" in err
    assert f"unpack it into {cache} (see README 'Getting the weights')" in err


def test_environment_supplies_defaults(
    server: Server, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MODEL_TYPE", "dino_vitb16")
    monkeypatch.setenv("MODEL_CACHE_DIR", str(cache))
    urls = ["--release-url", server.url("/dino_vitb16.zip")]

    assert main([*urls, "--backbone-url", server.url(BACKBONE_PATH)]) == 0

    assert (cache / DINO_BACKBONE_FILE).is_file()


def test_unwritable_cache_dir_is_a_clear_error(
    server: Server, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")

    assert fetch(server, blocker / "models") == 1

    err = capsys.readouterr().err
    assert f"error: cannot access {blocker / 'models'}" in err
    assert "Traceback" not in err


def test_fetch_command() -> None:
    assert fetch_command("dino_vitb16", "/app/models") == (
        "python -m predictor.weights --model-type dino_vitb16 --cache-dir /app/models"
    )
    assert shlex.split(fetch_command("ensemble", "/my models"))[-1] == "/my models"


def mirror(server: Server, model_type: str) -> None:
    """Serve ``model_type``'s files the way a mirror does: upstream file names, side by side."""
    variant = VARIANTS[model_type]
    server.files["/" + variant.release_zip_url.rsplit("/", 1)[1]] = server.files[
        f"/{model_type}.zip"]
    if variant.hub_file:
        server.files["/" + variant.hub_file.url.rsplit("/", 1)[1]] = server.files[
            HUB_PATHS[variant.hub_file.path]]


def test_ensure_weights_reads_the_mirror_from_the_environment(
    server: Server, cache: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    mirror(server, "dino_vitb16")
    monkeypatch.setenv("WEIGHTS_BASE_URL", server.base_url + "/")

    ensure_weights(model_type="dino_vitb16", cache_dir=cache, progress=True)

    assert [p for p, _, _ in server.requests] == [
        "/dreamsim_dino_vitb16_checkpoint.zip", "/dino_vitbase16_pretrain.pth"]
    assert (cache / DINO_BACKBONE_FILE).read_bytes() == server.files[BACKBONE_PATH]
    err = capsys.readouterr().err
    assert "dino_vitbase16_pretrain.pth: 100% (" in err and " MB/s" in err
    server.requests.clear()

    ensure_weights(model_type="dino_vitb16", cache_dir=cache, progress=False)

    assert server.requests == []  # all present and valid: nothing downloaded


def test_base_url_flag_and_quiet(
    server: Server, cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    mirror(server, "dinov2_vitb14_patch")
    argv = ["--model-type", "dinov2_vitb14_patch", "--cache-dir", str(cache),
            "--base-url", server.base_url]

    assert main([*argv, "--quiet"]) == 0

    assert [p for p, _, _ in server.requests] == [
        "/dreamsim_dinov2_vitb14_patch_checkpoint.zip", "/dinov2_vitb14_pretrain.pth"]
    assert "%" not in capsys.readouterr().err


def test_progress_line_shows_rate_and_time_left() -> None:
    now = [100.0]
    meter = Progress("x.pth", 10_000_000, 110_000_000, clock=lambda: now[0])
    now[0] = 110.0  # 20 MB more in 10 s: 2 MB/s, 80 MB to go
    assert meter.line(30_000_000) == "x.pth: 27% (30.0 MB / 110.0 MB, 2.0 MB/s, 0:40 left)"
    assert meter.line(110_000_000).endswith("(110.0 MB / 110.0 MB, 10.0 MB/s)")
    assert Progress("y", 0, None, clock=lambda: now[0]).line(0) == "y: 0.0 MB (0.0 MB/s)"


def test_progress_shows_life_every_two_seconds_on_a_slow_link(
        capsys: pytest.CaptureFixture[str]) -> None:
    """A 700 MB file at 0.5 MB/s takes 140 s to its first 10%: a line comes every 2 s."""
    now = [0.0]
    meter = Progress("big.pth", 0, 700_000_000, clock=lambda: now[0])
    for second in range(1, 9):  # 8 s at 0.5 MB/s: 4 MB, far from the first 70 MB step
        now[0] = float(second)
        meter.update(second * 500_000)
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 4, lines  # at 2, 4, 6 and 8 s
    assert lines[0].startswith("big.pth: 0% (1.0 MB / 700.0 MB, 0.5 MB/s")
    assert lines[-1].startswith("big.pth: 0% (4.0 MB / 700.0 MB")


def test_every_variant_is_upstreams_with_its_release_url() -> None:
    """The variants and release URLs are upstream's own (dreamsim/config.py), and the
    predictor's MODEL_TYPE setting accepts exactly these."""
    import typing

    from dreamsim.config import dreamsim_args, dreamsim_weights

    from predictor.settings import PredictorSettings

    assert set(VARIANTS) == set(dreamsim_args["model_config"]) == set(dreamsim_weights)
    for name, variant in VARIANTS.items():
        assert variant.release_zip_url == dreamsim_weights[name], name
        assert sources(variant).release_url == dreamsim_weights[name]
    annotation = PredictorSettings.model_fields["model_type"].annotation
    assert set(typing.get_args(annotation)) == set(VARIANTS)
