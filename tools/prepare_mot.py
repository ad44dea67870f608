"""MOT tracking ground truth to a ReID dataset (reid/tools/prepare_mot.py; reid-prepare-mot)."""

import sys

from reid.tools.prepare_mot import cli

if __name__ == "__main__":
    sys.exit(cli())
