"""The house rules of the module graph: no import cycle among the project's modules, and the
inference tools never load the trainer (docs/modules.md)."""
from __future__ import annotations

import ast
import pathlib
import re

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = ("ddsm_train", "inbreast_train", "mias_train")
INFERENCE_TOOLS = ("dm_predict", "dm_evaluate", "dm_calibrate", "ddsm_train.heatmap_score")
TRAINER = {"dm_train", "patch_clf_train", "image_clf_train", "dm_flags"}
# The modules carrying the original's names are front doors holding only those names
# (docs/modules.md); code written for the original imports them, the project's own code
# imports the rooms behind them.
FRONT_DOORS = {
    "dm_image": {"crop_img", "add_img_margins", "to_sparse", "index_balancer", "read_resize_img", "read_img_for_pred",
                 "sweep_img_patches", "get_prob_heatmap", "DMImageDataGenerator",
                 "DMDirectoryIterator", "get_roi_patches", "clust_kpts", "DMImgListIterator",
                 "DMNumpyArrayIterator", "DMExamListIterator", "DMCandidROIIterator"},
    "dm_keras_ext": {"data_format", "flip_all_img", "robust_load_model", "load_dat_ram",
                     "Yaroslav", "get_dl_model", "create_optimizer", "do_3stage_training",
                     "do_2stage_training", "DMMetrics", "DMAucModelCheckpoint", "DMFlush",
                     "make_parallel"},
    "dm_inference": {"INFER_HEADER_VAL", "INFER_HEADER", "pred_2view_img_list",
                     "make_pred_case"},
    "dm_preprocess": {"DMImagePreprocessor"},
}
IMAGE_ROOMS = ("dm_pixels", "dm_augment", "dm_recipe", "dm_listing", "dm_dataset", "dm_sweep")
TRAINING_ROOMS = {"dm_keras_ext", "dm_stages", "dm_callbacks", "dm_distribute"}
FRONT_DOOR_TESTS = ("test_original_api.py", "test_keras208.py")


def project_modules(root: pathlib.Path) -> dict[str, pathlib.Path]:
    mods = {p.stem: p for p in root.glob("*.py")}
    for pkg in PACKAGES:
        mods.update({f"{pkg}.{p.stem}": p for p in (root / pkg).glob("*.py")
                     if p.name != "__init__.py"})
    return mods


def _imports(tree: ast.Module) -> tuple[list[ast.stmt], list[ast.stmt]]:
    """(imports run when the module loads, imports inside functions); imports under
    `if TYPE_CHECKING:` are for type checkers only and count as neither."""
    top, inner = [], []

    def walk(node, in_function):
        for child in ast.iter_child_nodes(node):
            if (isinstance(child, ast.If) and isinstance(child.test, ast.Name)
                    and child.test.id == "TYPE_CHECKING"):
                continue
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                (inner if in_function else top).append(child)
            walk(child, in_function or isinstance(child, (ast.FunctionDef,
                                                          ast.AsyncFunctionDef, ast.Lambda)))
    walk(tree, False)
    return top, inner


def _targets(node: ast.stmt, mods: dict) -> set[str]:
    if isinstance(node, ast.Import):
        return {a.name for a in node.names}
    if node.level:
        return set()
    return {node.module} | {f"{node.module}.{a.name}" for a in node.names
                            if f"{node.module}.{a.name}" in mods}


def _load_graph(root: pathlib.Path = REPO) -> tuple[dict, dict, dict]:
    """(modules, module -> what it imports when it loads, module -> its imports inside
    functions)."""
    mods = project_modules(root)
    top, inner = {}, {}
    for m, p in mods.items():
        t, i = _imports(ast.parse(p.read_text()))
        top[m] = set().union(*(_targets(n, mods) for n in t)) if t else set()
        inner[m] = i
    return mods, top, inner


def import_graph(root: pathlib.Path) -> dict[str, set[str]]:
    """Module -> project modules it imports, at the top or inside functions alike."""
    mods, top, inner = _load_graph(root)
    return {m: {t for t in top[m].union(*(_targets(n, mods) for n in inner[m])) if t in mods}
            - {m} for m in mods}


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


@pytest.mark.parametrize("tool", INFERENCE_TOOLS)
def test_inference_never_reaches_a_training_room(tool):
    graph = import_graph(REPO)
    found = reachable(graph, tool) & TRAINING_ROOMS
    assert not found, sorted(found)


def test_the_checks_catch_a_cycle_and_a_trainer_import(tmp_path):
    """The checks above can fail: a small tree with both faults."""
    (tmp_path / "dm_a.py").write_text("import dm_b\n")
    (tmp_path / "dm_b.py").write_text("def f():\n    from dm_a import x\n")   # lazy: still a cycle
    (tmp_path / "dm_predict.py").write_text("def main():\n    import dm_train\n")
    (tmp_path / "dm_train.py").write_text("")
    (tmp_path / "dm_c.py").write_text("def __getattr__(name):\n    import dm_d\n")
    (tmp_path / "dm_d.py").write_text("import dm_c\n")   # a lazy facade import is an edge too
    for pkg in PACKAGES:
        (tmp_path / pkg).mkdir()
    graph = import_graph(tmp_path)
    assert find_cycle(graph) in (["dm_a", "dm_b", "dm_a"], ["dm_b", "dm_a", "dm_b"])
    assert graph["dm_c"] == {"dm_d"} and graph["dm_d"] == {"dm_c"}
    assert "dm_train" in reachable(graph, "dm_predict")


def test_no_sys_path_edits_in_library_code():
    for path in REPO.glob("dm_*.py"):
        assert "sys.path" not in path.read_text(), path.name


def _map_rows() -> list[tuple[str, str, str]]:
    """(layer, module path, job) of each row of docs/modules.md's module map, top to bottom."""
    page = (REPO / "docs" / "modules.md").read_text()
    section = page.split("## Module map", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        m = re.match(r"\| ([^|]+) \| `([^`]+\.py)` \| (.+) \|$", line)
        if m:
            rows.append((m[1], m[2], m[3]))
    return rows


def _summary(path: pathlib.Path) -> str:
    return (ast.get_docstring(ast.parse(path.read_text())) or "").split("\n")[0]


def test_docs_module_map_is_one_line_per_module_in_layer_order():
    """The map lists every module once, front doors on top, each above every module it
    imports, with the first line of its docstring as its job."""
    mods = project_modules(REPO)
    graph = import_graph(REPO)
    rows = _map_rows()
    by_path = {str(p.relative_to(REPO)): m for m, p in mods.items()}
    listed = [by_path.get(path, path) for _, path, _ in rows]
    assert sorted(listed) == sorted(mods), set(listed) ^ set(mods)
    assert listed[:len(FRONT_DOORS)] == sorted(FRONT_DOORS)
    row_of = {m: i for i, m in enumerate(listed)}
    for m in mods:
        below = [d for d in graph[m] if row_of[d] < row_of[m]]
        assert not below, f"{m} imports {below}, listed above it"
    layer: dict[str, int] = {}

    def depth(m: str) -> int:   # longest import chain below m
        if m not in layer:
            layer[m] = 1 + max((depth(d) for d in graph[m]), default=-1)
        return layer[m]
    for (shown, path, job), m in zip(rows, listed):
        assert job == _summary(mods[m]), path
        assert shown == ("front door" if m in FRONT_DOORS else str(depth(m))), path


def test_each_module_docstring_names_one_job():
    """A module's docstring opens with one line naming its job (a sentence of its own, short
    enough for the module map); details follow after a blank line."""
    paths = list(project_modules(REPO).values()) + sorted((REPO / "benchmarks").glob("*.py"))
    for path in paths:
        doc = ast.get_docstring(ast.parse(path.read_text()))
        assert doc, f"{path.name}: no docstring"
        first, *rest = doc.split("\n")
        assert first.endswith(".") and len(first) <= 100, f"{path.name}: {first!r}"
        assert not rest or rest[0] == "", f"{path.name}: the job line runs on"


# What a command's --help must not load: TensorFlow, and the libraries that take a second
# or more to import on a loaded machine (docs/modules.md, the house rules).
HEAVY = {"tensorflow", "keras", "scipy", "sklearn", "matplotlib", "pydicom"}
OPTIONAL_EXTRAS = {"tf2onnx"}   # not in requirements.txt; imported where used


def _loads_heavy(m: str, top: dict, mods: dict) -> bool:
    """Whether importing `m` imports a HEAVY library (directly or through project modules)."""
    seen, stack = set(), [m]
    while stack:
        x = stack.pop()
        if x in seen:
            continue
        seen.add(x)
        for t in top.get(x, ()):
            if t.split(".")[0] in HEAVY:
                return True
            if t in mods:
                stack.append(t)
    return False


def _defer_list() -> set[str]:
    page = (REPO / "docs" / "modules.md").read_text()
    text = page.split("defer-for-help:", 1)[1].split(".\n", 1)[0]
    names = re.findall(r"`([^`]+)`", text)
    return {n[:-3].replace("/", ".") if n.endswith(".py") else n for n in names}


def _is_command(path: pathlib.Path) -> bool:
    return 'if __name__ == "__main__":' in path.read_text()


def test_imports_at_the_top_except_heavy_ones_for_help():
    """An import inside a function is a heavy library (TensorFlow, Keras, SciPy,
    scikit-learn, Matplotlib, pydicom) or a room that imports one, in a module listed in
    docs/modules.md as loaded by a command's --help (or an optional extra)."""
    assert not OPTIONAL_EXTRAS & set((REPO / "requirements.txt").read_text().split())
    mods, top, inner = _load_graph()
    defer = _defer_list()
    assert defer <= set(mods), defer - set(mods)
    for m, nodes in inner.items():
        for node in nodes:
            for t in _targets(node, mods):
                if t.split(".")[0] in OPTIONAL_EXTRAS:
                    continue
                where = f"{mods[m].name}:{node.lineno} imports {t} inside a function"
                assert m in defer, where + " (not a module that defers for --help)"
                assert t.split(".")[0] in HEAVY or (t in mods and _loads_heavy(t, top, mods)), \
                    where + " (it is not heavy: import it at the top)"
    for m in defer:
        assert inner[m], f"{m} is listed as deferring but imports everything at the top"


def test_commands_load_nothing_heavy_before_their_flags():
    """Every command's module and the modules it loads import nothing heavy at the top, so
    --help answers at once; and each module that defers is loaded by some command."""
    mods, top, inner = _load_graph()
    commands = [m for m, p in mods.items() if _is_command(p)]
    assert len(commands) >= 20
    loaded = set()
    for c in commands:
        assert not _loads_heavy(c, top, mods), f"{c} loads a heavy library before --help"
        loaded |= reachable({m: {t for t in top[m] if t in mods} for m in mods}, c)
    assert _defer_list() <= loaded | set(commands)


def top_level_names(path: pathlib.Path) -> set[str]:
    """Names a module defines itself (def, class, assignment), not the ones it imports."""
    out = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            out.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            out.update(n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name))
    return out


def reexport_hops(root: pathlib.Path, files: list[pathlib.Path]) -> list[tuple[str, str, str]]:
    """(file, module, name) for every `from module import name` and `module.name` in `files`
    where `name` is a project module's import rather than its own definition."""
    mods = project_modules(root)
    own = {m: top_level_names(p) for m, p in mods.items()}
    hops = []
    for path in files:
        tree = ast.parse(path.read_text())
        aliases = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module in mods and node.level == 0:
                hops += [(path.name, node.module, a.name) for a in node.names
                         if a.name not in own[node.module]
                         and f"{node.module}.{a.name}" not in mods]
            elif isinstance(node, ast.Import):
                aliases.update({a.asname or a.name: a.name for a in node.names if a.name in mods})
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                    and node.value.id in aliases):
                mod = aliases[node.value.id]
                if node.attr not in own[mod] and f"{mod}.{node.attr}" not in mods:
                    hops.append((path.name, mod, node.attr))
    return hops


def _project_files(root: pathlib.Path) -> list[pathlib.Path]:
    files = [p for p in root.rglob("*.py") if ".venv" not in p.parts and p.name != "__init__.py"]
    return [p for p in files if p.stem not in FRONT_DOORS and p.name not in FRONT_DOOR_TESTS]


def test_every_name_is_imported_from_the_room_that_defines_it():
    assert reexport_hops(REPO, _project_files(REPO)) == []


def test_project_code_never_imports_a_front_door():
    for path in _project_files(REPO):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                assert not {a.name for a in node.names} & set(FRONT_DOORS), path.name
            elif isinstance(node, ast.ImportFrom):
                assert node.module not in FRONT_DOORS, path.name


def _used_names(tree: ast.Module) -> set[str]:
    """Names a module's own code uses (its import statements excluded)."""
    return {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}


@pytest.mark.parametrize("door", sorted(FRONT_DOORS))
def test_a_front_door_holds_only_the_original_names(door):
    """A front door defines exactly the original's public names, and imports from the rooms
    only what its adapters use or the original's names it hands on."""
    path = REPO / f"{door}.py"
    tree = ast.parse(path.read_text())
    own = {n for n in top_level_names(path) if not n.startswith("_")} - {"log"}
    imported = {a.asname or a.name for node in tree.body if isinstance(node, ast.ImportFrom)
                and node.module in project_modules(REPO) for a in node.names}
    assert own | (imported & FRONT_DOORS[door]) == FRONT_DOORS[door], door
    assert imported <= _used_names(tree) | FRONT_DOORS[door], sorted(
        imported - _used_names(tree) - FRONT_DOORS[door])
    if door == "dm_image":
        for room in IMAGE_ROOMS:
            assert not own & top_level_names(REPO / f"{room}.py"), room


def test_one_decoder():
    """Image bytes are decoded in one place (dm_pixels); every reader goes through it."""
    sites = []
    for path in _project_files(REPO):
        if path.parent.name in ("tests", "benchmarks"):
            continue
        text = path.read_text()
        sites += [(path.name, call) for call in ("cv2.imdecode(", "cv2.imread(", ".pixel_array")
                  if call in text]
    assert {name for name, _ in sites} == {"dm_pixels.py"}, sites


def test_the_hop_check_catches_a_hop(tmp_path):
    (tmp_path / "dm_a.py").write_text("def f():\n    return 1\n")
    (tmp_path / "dm_b.py").write_text("from dm_a import f\n")
    (tmp_path / "dm_c.py").write_text("import dm_b\nfrom dm_b import f\nx = dm_b.f()\n")
    hops = reexport_hops(tmp_path, [tmp_path / "dm_c.py"])
    assert hops == [("dm_c.py", "dm_b", "f"), ("dm_c.py", "dm_b", "f")]


def test_one_declaration_of_img_size():
    """`--img-size` is declared once (dm_cli.add_img_size) and means the same everywhere: the
    height and width (H W) images are resized to."""
    sites = []
    for path in _project_files(REPO) + [REPO / f"{d}.py" for d in FRONT_DOORS]:
        for node in ast.walk(ast.parse(path.read_text())):     # literal "--img-size" flags
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr == "add_argument"
                    and any(isinstance(a, ast.Constant) and a.value in ("--img-size", "--target-size")
                            for a in node.args)):
                sites.append(path.name)
    assert sites == [], sites
    assert "def add_img_size" in (REPO / "dm_cli.py").read_text()


RECIPE_FLAGS = ("--img-scale", "--no-img-scale", "--rescale-factor", "--no-rescale-factor",
                "--featurewise-mean", "--equalize-hist", "--no-equalize-hist",
                "--featurewise-center", "--no-featurewise-center", "--input-bits")


def _call_name(node: ast.Call) -> str | None:
    return node.func.id if isinstance(node.func, ast.Name) else (
        node.func.attr if isinstance(node.func, ast.Attribute) else None)


def _is_add_argument(node: ast.AST) -> bool:
    return isinstance(node, ast.Call) and _call_name(node) == "add_argument"


def flag_helpers(paths) -> dict[str, tuple[list[str], list[tuple]]]:
    """Functions that declare flags whose names are not string literals (dm_flags' `_bool`
    builds `f"--{name}"` and `f"--no-{name}"`, `_values` splits a row's names): name ->
    (parameters, templates). A template is ("f", parts) for an f-string of literal text
    and parameter indices, ("split", i) for `*param.split()`, ("raw", i) for a parameter
    given as is."""
    helpers = {}
    for path in paths:
        for fn in ast.walk(ast.parse(path.read_text())):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            params = [a.arg for a in fn.args.posonlyargs + fn.args.args + fn.args.kwonlyargs]
            templates, built = [], False
            for call in filter(_is_add_argument, ast.walk(fn)):
                for a in call.args:
                    if isinstance(a, ast.Constant):
                        continue
                    built = True
                    if isinstance(a, ast.JoinedStr):
                        parts = [v.value if isinstance(v, ast.Constant) else
                                 params.index(v.value.id) if isinstance(v.value, ast.Name)
                                 and v.value.id in params else None for v in a.values]
                        if None not in parts:
                            templates.append(("f", parts))
                    elif (isinstance(a, ast.Starred) and isinstance(a.value, ast.Call)
                          and isinstance(a.value.func, ast.Attribute)
                          and a.value.func.attr == "split"
                          and isinstance(a.value.func.value, ast.Name)
                          and a.value.func.value.id in params):
                        templates.append(("split", params.index(a.value.func.value.id)))
                    elif isinstance(a, ast.Name) and a.id in params:
                        templates.append(("raw", params.index(a.id)))
            if built:
                helpers[fn.name] = (params, templates)
    return helpers


def _helper_flags(call: ast.Call, params: list[str], templates: list[tuple]) -> set[str]:
    """The flag names a call of a flag helper declares: its templates filled with the
    call's literal arguments, and any literal argument (rows included) made only of
    dash-led words (`"--weight-decay -wd"`)."""
    given = {i: a.value for i, a in enumerate(call.args) if isinstance(a, ast.Constant)}
    given.update({params.index(k.arg): k.value.value for k in call.keywords
                  if k.arg in params and isinstance(k.value, ast.Constant)})
    found = set()
    for kind, spec in templates:
        if kind == "f" and all(isinstance(p, str) or isinstance(given.get(p), str) for p in spec):
            found.add("".join(p if isinstance(p, str) else given[p] for p in spec))
        elif kind in ("split", "raw") and isinstance(given.get(spec), str):
            found.update(given[spec].split() if kind == "split" else [given[spec]])
    for node in ast.walk(call):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            words = node.value.split()
            if words and all(w.startswith("-") for w in words):
                found.update(words)
    return found


def _declared_flags(path: pathlib.Path, names, helpers=None) -> set[str]:
    """The flags of `names` a file declares: string literals of an add_argument call
    (several names in one literal counted apart), and names built by a flag helper
    (`flag_helpers`; default: the file's own) from a call's literal arguments."""
    helpers = flag_helpers([path]) if helpers is None else helpers
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if _is_add_argument(node):
            found.update(w for a in node.args if isinstance(a, ast.Constant)
                         and isinstance(a.value, str) for w in a.value.split())
        elif isinstance(node, ast.Call) and _call_name(node) in helpers:
            found |= _helper_flags(node, *helpers[_call_name(node)])
    return found & set(names)


def test_one_declaration_of_the_recipe_flags():
    """The recipe's flags are declared once (dm_cli.add_recipe_flags) for the trainers,
    predict, heatmap_score, convert_checkpoint and featurewise_mean, and become a Recipe
    in one place (dm_recipe.recipe_from_flags); also not through a flag helper such as
    dm_flags' `_bool(g, "equalize-hist", ...)`."""
    files = _project_files(REPO) + [REPO / f"{d}.py" for d in FRONT_DOORS]
    helpers = flag_helpers(files)
    assert {"_bool", "_optional", "_values", "add_img_size"} <= set(helpers), sorted(helpers)
    sites = {path.name: found for path in files
             if (found := _declared_flags(path, RECIPE_FLAGS, helpers))}
    assert set(sites) == {"dm_cli.py"}, sites
    assert sites["dm_cli.py"] == set(RECIPE_FLAGS)


def test_the_recipe_flag_check_catches_a_declaration(tmp_path):
    (tmp_path / "tool.py").write_text('p.add_argument("--rescale-factor", type=float)\n'
                                      'p.add_argument("--other", "--input-bits")\n')
    assert _declared_flags(tmp_path / "tool.py", RECIPE_FLAGS) == {"--rescale-factor",
                                                                   "--input-bits"}


def test_the_recipe_flag_check_sees_through_flag_helpers(tmp_path):
    """Recipe flags declared through helpers that build the names (dm_flags' kind), and
    helpers of another file, are found; other flags declared through them are not."""
    (tmp_path / "helpers.py").write_text(
        'def _bool(g, name, dest, help):\n'
        '    g.add_argument(f"--{name}", dest=dest, action="store_true", help=help)\n'
        '    g.add_argument(f"--no-{name}", dest=dest, action="store_false")\n'
        'def _values(g, *rows):\n'
        '    for names, dest, type_, help_ in rows:\n'
        '        g.add_argument(*names.split(), dest=dest, type=type_, help=help_)\n'
        'def _split(g, names, help):\n'
        '    g.add_argument(*names.split(), help=help)\n')
    (tmp_path / "tool.py").write_text(
        'import helpers\n'
        'helpers._bool(g, "equalize-hist", "equalize_hist", "see --img-scale")\n'
        '_values(g, ("--weight-decay -wd", "wd", float, "x"),\n'
        '        ("--featurewise-mean -fm", "featurewise_mean", float, "y"))\n'
        '_split(g, help="z", names="-ic --img-scale")\n'
        '_bool(g, "augmentation", "augmentation", "--rescale-factor is another")\n')
    helpers = flag_helpers([tmp_path / "helpers.py", tmp_path / "tool.py"])
    assert set(helpers) == {"_bool", "_values", "_split"}
    assert _declared_flags(tmp_path / "tool.py", RECIPE_FLAGS, helpers) == {
        "--equalize-hist", "--no-equalize-hist", "--featurewise-mean", "--img-scale"}
    assert _declared_flags(tmp_path / "helpers.py", RECIPE_FLAGS, helpers) == set()


def test_nosave_is_compared_only_where_flags_are_parsed():
    """The original's "NOSAVE" becomes None in dm_flags; the rest of the project sees None
    (the original's own adapters, which take it as an argument, excepted)."""
    where = sorted(p.name for p in _project_files(REPO)
                   if p.parent == REPO and '"NOSAVE"' in p.read_text())
    assert where == ["dm_callbacks.py", "dm_flags.py"], where


def test_one_logging_setup():
    """Commands log through dm_cli.setup_logging (or log_to_stderr when their result goes to
    standard output); nothing else configures the root logger or reaches its handlers."""
    for path in _project_files(REPO):
        if path.parent.name in ("tests", "benchmarks") or path.name == "dm_cli.py":
            continue
        text = path.read_text()
        assert "basicConfig(" not in text and "addHandler(" not in text, path.name
        assert "dm_cli._" not in text, path.name


def test_one_dicom_header_reader_and_one_png_writer():
    """DICOM files are parsed in one room (dm_pixels: the decoder and `read_dicom_header`),
    PNGs encoded by one writer (`dm_pixels.write_png`)."""
    for path in _project_files(REPO):
        if path.parent.name in ("tests", "benchmarks") or path.name == "dm_pixels.py":
            continue
        text = path.read_text()
        assert "dcmread(" not in text and 'imencode(".png"' not in text, path.name


def test_no_module_over_600_lines():
    """Small, readable files: a module that outgrows 600 lines holds more than one job. The
    Keras 2 checkpoint converter (`dm_checkpoint`), self-contained by design, is exempt."""
    for m, path in project_modules(REPO).items():
        n = len(path.read_text().splitlines())
        assert m == "dm_checkpoint" or n <= 600, f"{path.name}: {n} lines"


# The places besides dm_listing.read_image_csv that parse CSV rows, each reading another
# kind of table on purpose: (file, what it reads, as written) -> what that table is.
OTHER_CSV_READS = {
    ("ddsm_train/heatmap_score.py", "pat_csv"): "--pat-csv, the original's table of exams "
                                                "(patient_id, side, view)",
    ("ddsm_train/heatmap_score.py", "pat_list"): "--pat-list, patient ids one a line",
    ("ddsm_train/prepare_cbis_ddsm.py", "p"): "CBIS-DDSM's description CSV",
    ("ddsm_train/sample_patches_combined.py", "p"): "the ROI mask table (roi_mask_path.csv)",
    # An image list: to move to read_image_csv when its ids are read there (issue 31).
    ("ddsm_train/sample_patches_combined.py", "args.images_csv"): "a recipe's images.csv, "
                                                                  "for its patient ids",
    ("dm_end2end.py", "preds"): "predict.py's scores",
    ("dm_evaluate.py", "path"): "a predictions CSV (scores and labels)",
    ("dm_localisation.py", "csv"): "the ROI mask table (roi_mask_path.csv)",
    ("dm_train.py", "l"): "the training history CSV, cut at the resumed epoch",
    ("inbreast_train/prepare_inbreast.py", "p"): "INbreast.csv (';'-separated metadata)",
    ("inbreast_train/prepare_inbreast.py", "s.strip().strip('()')"): "an '(x, y)' point of "
                                                                      "an INbreast ROI (XML)",
    ("mias_train/cross_validate.py", "patches / 'patch_index.csv'"): "the patch sampler's index",
    ("mias_train/cross_validate.py", "out / 'oof_images.csv'"): "the run's out-of-fold scores",
    ("mias_train/cross_validate.py", "pathlib.Path(args.compare_with) / 'oof_images.csv'"):
        "another run's out-of-fold scores (--compare-with)",
    ("mias_train/cv_report.py", "out / 'oof_patches.csv'"): "the run's out-of-fold scores",
    ("mias_train/cv_report.py", "out / 'oof_images.csv'"): "the run's out-of-fold scores",
    ("mias_train/cv_report.py", "out / 'patches_all' / 'patch_index.csv'"): "the patch "
                                                                            "sampler's index",
}
TABLE_READERS = {"read_csv", "read_table", "read_fwf", "loadtxt", "genfromtxt", "DictReader"}


def csv_row_parsers(root: pathlib.Path, files) -> list[tuple[str, str]]:
    """(file, what it reads) for every CSV row parser in `files`: pandas' and NumPy's
    table readers, the csv module's readers, and a string split at ',', ';' or a tab."""
    found = []
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call):
                continue
            name = _call_name(node)
            module = node.func.value if isinstance(node.func, ast.Attribute) else None
            if name in TABLE_READERS or (name == "reader" and isinstance(module, ast.Name)
                                         and module.id == "csv"):
                what = ast.unparse(node.args[0]) if node.args else ""
            elif (name in ("split", "rsplit") and node.args and module is not None
                  and isinstance(node.args[0], ast.Constant) and node.args[0].value in ",;\t"):
                what = ast.unparse(module)
            else:
                continue
            found.append((str(path.relative_to(root)), what))
    return found


def test_one_image_csv_reader():
    """Lists of images in a CSV are parsed in one place, `dm_listing.read_image_csv`: every
    other CSV row parser in the project's modules reads another kind of table, named in
    OTHER_CSV_READS (an entry that no longer matches a site fails too)."""
    files = [p for p in _project_files(REPO) if p.parent.name not in ("tests", "benchmarks")]
    sites = [s for s in csv_row_parsers(REPO, files) if s[0] != "dm_listing.py"]
    assert sorted(set(sites)) == sorted(OTHER_CSV_READS), set(sites) ^ set(OTHER_CSV_READS)
    assert ("dm_listing.py", "f") in csv_row_parsers(REPO, [REPO / "dm_listing.py"])
    assert "def read_image_csv" in (REPO / "dm_listing.py").read_text()


def test_the_csv_reader_check_catches_other_parsers(tmp_path):
    (tmp_path / "dm_x.py").write_text(
        "import csv\nimport numpy as np\nimport pandas as pd\n"
        "a = pd.read_csv(d / 'images.csv', dtype=str)\n"
        "b = [line.split(',') for line in open('list.csv')]\n"
        "c = list(csv.reader(open('l.csv')))\n"
        "e = np.loadtxt('l.csv', delimiter=',')\n"
        "f = row.rsplit(';', 1)\n"
        "g = 'a b'.split(), name.split('_'), reader(x)\n")
    assert sorted(csv_row_parsers(tmp_path, [tmp_path / "dm_x.py"])) == [
        ("dm_x.py", "'l.csv'"), ("dm_x.py", "d / 'images.csv'"), ("dm_x.py", "line"),
        ("dm_x.py", "open('l.csv')"), ("dm_x.py", "row")]
