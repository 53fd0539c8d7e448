"""`python featurewise_mean.py ...` in a checkout, as before; the tool is
`dm_featurewise_mean.py`, installed as the command `dm-featurewise-mean` (docs/training.md,
docs/modules.md)."""
from dm_featurewise_mean import build_parser, main, run  # noqa: F401

if __name__ == "__main__":
    raise SystemExit(main())
