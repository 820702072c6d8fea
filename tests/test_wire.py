"""The transformer-predictor wire contract has one home, ``service_common/wire.py``, and
the eight variant names one table, ``predictor/layout.py``: every other place that needs
them imports them or is checked against them here."""

from __future__ import annotations

import ast
import json
import math
import typing
from pathlib import Path

from predictor.layout import VARIANTS
from service_common import wire
from testing.procs import REPO_ROOT

# Literals that are the wire contract (the tensor names are also common words, so they are
# checked through the modules' imports instead).
CONTRACT_LITERALS = {wire.MODEL_NAME, wire.INPUT_DATATYPE, wire.OUTPUT_DATATYPE}
SERVING_CODE = ("predictor", "transformer", "service_common")


def test_the_constants_describe_one_uint8_image() -> None:
    assert wire.IMAGE_SHAPE == (3, wire.IMAGE_SIZE, wire.IMAGE_SIZE) == (3, 224, 224)
    assert wire.IMAGE_BYTES == math.prod(wire.IMAGE_SHAPE)
    assert (wire.MODEL_NAME, wire.INPUT_NAME, wire.OUTPUT_NAME) == ("dreamsim", "image",
                                                                   "embedding")


def test_both_sides_use_the_one_definition() -> None:
    import predictor.layout
    import predictor.server
    import predictor.settings
    import transformer.images
    import transformer.predictor_client
    import transformer.server

    assert predictor.layout.IMAGE_SIZE is transformer.images.IMAGE_SIZE is wire.IMAGE_SIZE
    assert predictor.settings.IMAGE_BYTES is wire.IMAGE_BYTES
    assert predictor.server.MODEL_NAME is transformer.server.MODEL_NAME is wire.MODEL_NAME
    assert predictor.server.INPUT_NAME is transformer.predictor_client.INPUT_NAME
    assert predictor.server.OUTPUT_NAME is wire.OUTPUT_NAME


def _code_literals(path: Path) -> list[tuple[int, object]]:
    """Constants in code (docstrings and comments are not code): contract strings, and
    ``(3, 224, 224)``-like sequences."""
    found: list[tuple[int, object]] = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Constant) and node.value in CONTRACT_LITERALS:
            found.append((node.lineno, node.value))
        if isinstance(node, ast.Tuple | ast.List):
            values = [e.value for e in node.elts if isinstance(e, ast.Constant)]
            if values[-3:] == [3, 224, 224]:
                found.append((node.lineno, tuple(values)))
    return found


def test_no_serving_module_writes_the_contract_out_again() -> None:
    offenders = {}
    for folder in SERVING_CODE:
        for path in sorted((REPO_ROOT / folder).rglob("*.py")):
            if path == REPO_ROOT / "service_common" / "wire.py":
                continue
            if found := _code_literals(path):
                offenders[str(path.relative_to(REPO_ROOT))] = found
    assert not offenders, f"import these from service_common.wire instead: {offenders}"


def test_the_scan_finds_a_copy() -> None:
    """The check above can fail: a module with its own copy of the contract is found."""
    sample = REPO_ROOT / "service_common" / "wire.py"
    assert {v for _, v in _code_literals(sample)} >= {"dreamsim", "UINT8", "FP32"}


def test_variant_names_follow_the_layout_table() -> None:
    """The places that must spell the eight names out (a pydantic Literal for the settings'
    error message, the chart's JSON schema for helm) list exactly the table's names."""
    from predictor.settings import PredictorSettings

    annotation = PredictorSettings.model_fields["model_type"].annotation
    assert set(typing.get_args(annotation)) == set(VARIANTS)
    schema = json.loads((REPO_ROOT / "charts" / "image-similarity-service"
                         / "values.schema.json").read_text())
    enums = []

    def walk(node: object, key: str = "") -> None:
        if isinstance(node, dict):
            if key == "modelType" and "enum" in node:
                enums.append(node["enum"])
            for k, v in node.items():
                walk(v, k)

    walk(schema)
    assert enums and all(set(e) == set(VARIANTS) for e in enums), enums
