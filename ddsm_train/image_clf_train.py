"""Alias kept at the original's location: runs the top-level `image_clf_train.py`."""
import os
import sys

if not __package__:  # run as a script from its folder: put the repo root on the path
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from image_clf_train import main, run  # noqa: E402,F401  (run: the original's entry point)

if __name__ == "__main__":
    sys.exit(main())
