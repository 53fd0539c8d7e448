"""Checkout door: `python calibrate.py` runs `dm_calibrate` (installed as `dm-calibrate`).

The wheel installs no `calibrate`: that name is another package's on PyPI (docs/modules.md)."""
from dm_calibrate import build_parser, main, run  # noqa: F401

if __name__ == "__main__":
    raise SystemExit(main())
