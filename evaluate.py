"""Checkout door: `python evaluate.py` runs `dm_evaluate` (installed as `dm-evaluate`).

The wheel installs no `evaluate`: that name is another package's on PyPI (docs/modules.md)."""
from dm_evaluate import build_parser, evaluate, main, run  # noqa: F401

if __name__ == "__main__":
    raise SystemExit(main())
