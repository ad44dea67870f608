"""Export a run to ONNX with a parity check (reid/tools/export.py; installed as reid-export)."""

import sys

from reid.tools.export import cli

if __name__ == "__main__":
    sys.exit(cli())
