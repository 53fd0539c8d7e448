"""Checkout door: `python convert_checkpoint.py` runs `dm_convert_checkpoint`.

Kept so that `python convert_checkpoint.py ...` works in a checkout; the wheel installs the tool as
`dm-convert-checkpoint` instead, because `convert_checkpoint` is another package's name on PyPI
(docs/original.md, docs/modules.md).
"""
from dm_convert_checkpoint import build_parser, main, run  # noqa: F401

if __name__ == "__main__":
    raise SystemExit(main())
