"""`python -m fastkv bench` (placeholder: being written)."""

import sys


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    print("fastkv bench: not written yet")
    return 0
