"""`python -m photon` runs the `photon` command."""

import sys

from photon.cli import main

sys.exit(main())
