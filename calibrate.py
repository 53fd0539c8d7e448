"""Checkout door: `python calibrate.py` runs `dm_calibrate` (installed as `dm-calibrate`).

Kept so that `python calibrate.py ...` works in a checkout; the wheel installs the tool as
`dm-calibrate` instead, because `calibrate` is another package's name on PyPI
(docs/prediction.md, docs/modules.md).
"""
from dm_calibrate import build_parser, main, run  # noqa: F401

if __name__ == "__main__":
    raise SystemExit(main())
