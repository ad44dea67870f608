"""Search a folder of images with query images (reid/tools/search.py; installed as reid-search)."""

import sys

from reid.tools.search import cli

if __name__ == "__main__":
    sys.exit(cli())
