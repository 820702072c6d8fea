"""``python -m predictor``: start the DreamSim predictor model server."""

import sys

from .server import main

sys.exit(main())
