"""``python -m hier_ps ...`` is the ``hier-ps`` command."""

import sys

from hier_ps.cli import main

if __name__ == "__main__":
    sys.exit(main())
