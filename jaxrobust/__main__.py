"""`python -m jaxrobust` runs the `jaxrobust` command."""

import sys

from jaxrobust.cli import main

sys.exit(main())
