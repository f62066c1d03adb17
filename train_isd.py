"""The original `train_isd.py` command line, run by the isd engine (flag translation only)."""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "src"))

from isd.cli.legacy_train import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main("train_isd.py"))
