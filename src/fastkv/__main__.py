"""``python -m fastkv bench``: see fastkv.bench."""

import sys

from fastkv.bench import main

if __name__ == "__main__":
    sys.exit(main())
