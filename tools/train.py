"""Train a ReID model (reid/tools/train.py; installed as reid-train)."""

import sys

from reid.tools.train import cli

if __name__ == "__main__":
    sys.exit(cli())
