"""Checkout door: `python predict.py` runs `dm_predict` (installed as `dm-predict`).

Kept so that `python predict.py ...` works in a checkout; the wheel installs the tool as
`dm-predict` instead, because `predict` is another package's name on PyPI
(docs/prediction.md, docs/modules.md).
"""
from dm_predict import build_parser, main, predict, run  # noqa: F401

if __name__ == "__main__":
    raise SystemExit(main())
