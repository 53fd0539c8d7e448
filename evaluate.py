"""Checkout door: `python evaluate.py` runs `dm_evaluate` (installed as `dm-evaluate`).

Kept so that `python evaluate.py ...` works in a checkout; the wheel installs the tool as
`dm-evaluate` instead, because `evaluate` is another package's name on PyPI
(docs/prediction.md, docs/modules.md).
"""
from dm_evaluate import build_parser, evaluate, main, run  # noqa: F401

if __name__ == "__main__":
    raise SystemExit(main())
