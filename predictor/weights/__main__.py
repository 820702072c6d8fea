"""``python -m predictor.weights --model-type dino_vitb16 --cache-dir /app/models``."""

import sys

from .cli import main

sys.exit(main())
