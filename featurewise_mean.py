"""Checkout door: `python featurewise_mean.py` runs `dm_featurewise_mean`.

Kept so that `python featurewise_mean.py ...` works in a checkout; the wheel installs the tool as
`dm-featurewise-mean` instead, because `featurewise_mean` is another package's name on PyPI
(docs/training.md, docs/modules.md).
"""
from dm_featurewise_mean import build_parser, main, run  # noqa: F401

if __name__ == "__main__":
    raise SystemExit(main())
