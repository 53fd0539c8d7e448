"""`python convert_checkpoint.py ...` in a checkout, as before; the tool is
`dm_convert_checkpoint.py`, installed as the command `dm-convert-checkpoint`
(docs/original.md, docs/modules.md)."""
from dm_convert_checkpoint import build_parser, main, run  # noqa: F401

if __name__ == "__main__":
    raise SystemExit(main())
