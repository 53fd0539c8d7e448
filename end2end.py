"""Checkout door: `python end2end.py` runs `dm_end2end` (installed as `dm-end2end`).

The wheel installs no `end2end`: that name is another package's on PyPI (docs/modules.md)."""
from dm_end2end import build_parser, main, run  # noqa: F401

if __name__ == "__main__":
    raise SystemExit(main())
