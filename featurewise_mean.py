"""Checkout door: `python featurewise_mean.py` runs `dm_featurewise_mean`.

The wheel installs no `featurewise_mean`: that name is another package's on PyPI (docs/modules.md)."""
from dm_featurewise_mean import build_parser, main, run  # noqa: F401

if __name__ == "__main__":
    raise SystemExit(main())
