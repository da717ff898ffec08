"""Entry point for `python -m relay`."""

import sys

from relay.cli.command import main

sys.exit(main())
