"""`python calibrate.py ...` in a checkout, as before; the tool is `dm_calibrate.py`, installed
as the command `dm-calibrate` (docs/prediction.md, docs/modules.md)."""
from dm_calibrate import build_parser, main, run  # noqa: F401

if __name__ == "__main__":
    raise SystemExit(main())
