"""Checkout door: `python predict.py` runs `dm_predict` (installed as `dm-predict`).

The wheel installs no `predict`: that name is another package's on PyPI (docs/modules.md)."""
from dm_predict import build_parser, main, predict, run  # noqa: F401

if __name__ == "__main__":
    raise SystemExit(main())
