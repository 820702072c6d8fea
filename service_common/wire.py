"""The wire contract between the transformer and the predictor, in one place.

The transformer sends one tensor ``image`` of ``UINT8 [N, 3, 224, 224]`` (raw contents on
gRPC v2, CHW, RGB, DreamSim's 224 px input before normalisation) to the model
``dreamsim``; the predictor answers one tensor ``embedding`` of ``FP32 [N, D]`` (normalised
DreamSim embeddings). Both sides import these names, so neither can drift from the other;
``tests/test_wire.py`` checks that no module writes them out again.

Pure Python: the transformer's image has no torch (and this module needs no numpy).
"""

from __future__ import annotations

MODEL_NAME = "dreamsim"
"""The KServe model name: the predictor serves it, the transformer calls it."""

INPUT_NAME = "image"
INPUT_DATATYPE = "UINT8"
OUTPUT_NAME = "embedding"
OUTPUT_DATATYPE = "FP32"

IMAGE_SIZE = 224
"""DreamSim's input side in pixels (every variant; DINOv2's 518 px grid is resized to it)."""
CHANNELS = 3
IMAGE_SHAPE = (CHANNELS, IMAGE_SIZE, IMAGE_SIZE)
"""One image on the wire (the batch dimension ``N`` comes first)."""
IMAGE_BYTES = CHANNELS * IMAGE_SIZE * IMAGE_SIZE
"""One uint8 image tensor on the wire: sizes the gRPC message limits."""
