"""The house rules of the module graph: no import cycle among the project's modules, and the
inference tools never load the trainer (README, "Module map")."""
from __future__ import annotations

import ast
import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = ("ddsm_train", "inbreast_train", "mias_train")
INFERENCE_TOOLS = ("predict", "evaluate", "calibrate", "ddsm_train.heatmap_score")
TRAINER = {"dm_train", "patch_clf_train", "image_clf_train", "dm_flags"}


def project_modules(root: pathlib.Path) -> dict[str, pathlib.Path]:
    mods = {p.stem: p for p in root.glob("*.py")}
    for pkg in PACKAGES:
        mods.update({f"{pkg}.{p.stem}": p for p in (root / pkg).glob("*.py")
                     if p.name != "__init__.py"})
    return mods


def import_graph(root: pathlib.Path) -> dict[str, set[str]]:
    """Module -> project modules it imports, at the top or inside functions alike."""
    mods = project_modules(root)
    graph = {}
    for name, path in mods.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                deps.update(a.name for a in node.names if a.name in mods)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                if node.module in mods:
                    deps.add(node.module)
                deps.update(f"{node.module}.{a.name}" for a in node.names
                            if f"{node.module}.{a.name}" in mods)
        graph[name] = deps - {name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path [a, b, ..., a], or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n):
        state[n] = 1
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state:
                found = visit(m)
                if found:
                    return found
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state:
            found = visit(n)
            if found:
                return found
    return None


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for m in graph.get(todo.pop(), ()):
            if m not in seen:
                seen.add(m)
                todo.append(m)
    return seen


def test_no_import_cycle_among_the_project_modules():
    graph = import_graph(REPO)
    assert len(graph) > 30 and "dm_image" in graph and "ddsm_train.heatmap_score" in graph
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


@pytest.mark.parametrize("tool", INFERENCE_TOOLS)
def test_inference_tools_never_import_the_trainer(tool):
    graph = import_graph(REPO)
    assert not reachable(graph, tool) & TRAINER, sorted(reachable(graph, tool) & TRAINER)


def test_the_checks_catch_a_cycle_and_a_trainer_import(tmp_path):
    """The checks above can fail: a small tree with both faults."""
    (tmp_path / "dm_a.py").write_text("import dm_b\n")
    (tmp_path / "dm_b.py").write_text("def f():\n    from dm_a import x\n")   # lazy: still a cycle
    (tmp_path / "predict.py").write_text("def main():\n    import dm_train\n")
    (tmp_path / "dm_train.py").write_text("")
    (tmp_path / "dm_c.py").write_text("def __getattr__(name):\n    import dm_d\n")
    (tmp_path / "dm_d.py").write_text("import dm_c\n")   # a lazy facade import is an edge too
    for pkg in PACKAGES:
        (tmp_path / pkg).mkdir()
    graph = import_graph(tmp_path)
    assert find_cycle(graph) in (["dm_a", "dm_b", "dm_a"], ["dm_b", "dm_a", "dm_b"])
    assert graph["dm_c"] == {"dm_d"} and graph["dm_d"] == {"dm_c"}
    assert "dm_train" in reachable(graph, "predict")


def test_no_sys_path_edits_in_library_code():
    for path in REPO.glob("dm_*.py"):
        assert "sys.path" not in path.read_text(), path.name


def test_docs_module_map_names_every_module():
    page = (REPO / "docs" / "modules.md").read_text()
    section = page.split("## Module map", 1)[1].split("\n## ", 1)[0]
    for path in REPO.glob("*.py"):
        assert f"`{path.name}`" in section, path.name
    for room in ("dm_modelfile.py", "dm_callbacks.py", "dm_errors.py"):
        assert f"`{room}`" in section
