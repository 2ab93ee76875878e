"""`python -m daemon`: the same as the `edgellm` command."""

import sys

from daemon.cli import main

sys.exit(main())
