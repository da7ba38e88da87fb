"""``python -m pipeline``: the Beam preprocessing job (see ``pipeline.build``)."""

import sys

from pipeline.build import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
