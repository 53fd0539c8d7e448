"""Checkout door: `python end2end.py` runs `dm_end2end` (installed as `dm-end2end`).

Kept so that `python end2end.py ...` works in a checkout; the wheel installs the tool as
`dm-end2end` instead, because `end2end` is another package's name on PyPI
(docs/results.md, docs/modules.md).
"""
from dm_end2end import build_parser, main, run  # noqa: F401

if __name__ == "__main__":
    raise SystemExit(main())
