"""`python end2end.py ...` in a checkout, as before; the tool is `dm_end2end.py`, installed as
the command `dm-end2end` (docs/results.md, docs/modules.md)."""
from dm_end2end import build_parser, main, run  # noqa: F401

if __name__ == "__main__":
    raise SystemExit(main())
