"""The README is a front door and docs/ holds the rest: size, the two commands, the map of
docs/, and every relative link resolving (README, "Documentation")."""
from __future__ import annotations

import pathlib
import re

REPO = pathlib.Path(__file__).resolve().parents[1]
README = REPO / "README.md"
PAGES = sorted((REPO / "docs").glob("*.md"))


def _links(path: pathlib.Path) -> list[str]:
    text = path.read_text()
    return [t for t in re.findall(r"\]\(([^)\s]+)\)", text) if "://" not in t]


def test_readme_is_a_front_door():
    text = README.read_text()
    assert len(text.encode()) <= 12 * 1024
    blocks = re.findall(r"```bash\n(.*?)```", text.split("## Two commands")[1].split("\n## ")[0],
                        flags=re.S)
    assert len(blocks) == 2
    assert blocks[0].strip().endswith(".venv/bin/python end2end.py")
    assert blocks[1].strip().endswith(".venv/bin/python -m pytest -q")
    assert text.count("\n## Results") == 1


def test_readme_and_index_map_every_docs_page():
    readme, index = README.read_text(), (REPO / "docs" / "index.md").read_text()
    for page in PAGES:
        if page.name == "index.md":
            continue
        assert f"(docs/{page.name})" in readme, page.name
        assert f"({page.name})" in index, page.name


def test_every_relative_link_resolves():
    for path in [README] + PAGES:
        for target in _links(path):
            target = target.split("#")[0]
            if target:
                assert (path.parent / target).exists(), f"{path.name}: {target}"


def test_ci_runs_the_readme_test_command():
    ci = (REPO / ".ci" / "run").read_text()
    assert ".venv/bin/python -m pytest -q\n" in ci
    assert "-m slow" in ci
