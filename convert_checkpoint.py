"""Checkout door: `python convert_checkpoint.py` runs `dm_convert_checkpoint`.

The wheel installs no `convert_checkpoint`: that name is another package's on PyPI (docs/modules.md)."""
from dm_convert_checkpoint import build_parser, main, run  # noqa: F401

if __name__ == "__main__":
    raise SystemExit(main())
