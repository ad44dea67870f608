"""Evaluate a checkpoint (reid/tools/test.py; installed as reid-test)."""

import sys

from reid.tools.test import cli

if __name__ == "__main__":
    sys.exit(cli())
