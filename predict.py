"""`python predict.py ...` in a checkout, as before; the tool is `dm_predict.py`, installed as
the command `dm-predict` (docs/prediction.md, docs/modules.md)."""
from dm_predict import build_parser, main, predict, run  # noqa: F401

if __name__ == "__main__":
    raise SystemExit(main())
