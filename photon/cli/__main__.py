"""`python -m photon.cli` (what torchrun launches) runs the `photon` command."""

import sys

from photon.cli import main

sys.exit(main())
