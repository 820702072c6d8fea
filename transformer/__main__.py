"""``python -m transformer``: start the public API (transformer) server."""

import sys

from .server import main

sys.exit(main())
