"""Command line: `prm-check run | build-default | plan | report | compare`."""

import sys


def main(argv=None) -> int:
    print("prm-check: not built yet", file=sys.stderr)
    return 2
