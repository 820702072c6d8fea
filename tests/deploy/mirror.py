"""A stand-in for DreamSim's release hosts: a folder holding a variant's files under their
upstream names (``predictor.weights``' mirror layout, ``WEIGHTS_BASE_URL``), served by a
plain HTTP server in the image tests (docker-compose) and the cluster tests (a pod)."""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path


def release_mirror(weights: Path, variant_name: str, folder: Path) -> Path:
    """Write ``variant_name``'s release zip (made of the files in the cache ``weights``) and
    its torch.hub backbone, if it has one, into ``folder``; world-readable. Returns it."""
    from predictor.layout import get_variant
    from predictor.weights.fetch import sources

    variant = get_variant(variant_name)
    where = sources(variant, "http://mirror")
    folder.mkdir(mode=0o755, parents=True, exist_ok=True)
    with zipfile.ZipFile(folder / where.release_url.rsplit("/", 1)[1], "w") as zf:
        for name in variant.release_files:
            for path in [weights / name, *sorted((weights / name).rglob("*"))]:
                zf.write(path, path.relative_to(weights).as_posix())
    if variant.hub_file is not None:
        assert where.hub_url is not None
        shutil.copy(weights / variant.hub_file.path, folder / where.hub_url.rsplit("/", 1)[1])
    folder.chmod(0o755)
    for path in folder.iterdir():
        path.chmod(0o644)
    return folder
