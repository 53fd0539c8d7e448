"""`python evaluate.py ...` in a checkout, as before; the tool is `dm_evaluate.py`, installed
as the command `dm-evaluate` (docs/prediction.md, docs/modules.md)."""
from dm_evaluate import build_parser, evaluate, main, run  # noqa: F401

if __name__ == "__main__":
    raise SystemExit(main())
