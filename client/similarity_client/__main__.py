"""``python -m similarity_client``: the command line (see :mod:`similarity_client.cli`)."""

import sys

from .cli import main

sys.exit(main())
