"""`python -m rtpose ...` is the `rtpose` command."""

import sys

from rtpose.cli import main

sys.exit(main())
