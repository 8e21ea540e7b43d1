"""The layering of the package (README, *Layout*), enforced on the source: the import graph of
``jdiff/`` and the three CLIs (function-local imports included) has no cycle and no import from a lower layer to a higher one; the
core imports no Flax, Optax, orbax or TFDS; models never import the core; ``sample.py`` and ``eval.py``
reach nothing of the training package."""
import ast
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
CLIS = ("train", "sample", "eval")
# Layers from the bottom up: a module may import modules of its own layer or of lower ones only.
LAYERS = ("core", "utils", "models", "data", "experiment", "generation", "eval", "training", "cli")


def _module_name(path: pathlib.Path) -> str:
  rel = path.relative_to(ROOT).with_suffix("")
  parts = list(rel.parts)
  if parts[-1] == "__init__":
    parts = parts[:-1]
  return ".".join(parts)


def _layer(module: str) -> str:
  if module in CLIS:
    return "cli"
  parts = module.split(".")
  if len(parts) >= 2 and parts[1] in LAYERS:
    return parts[1]
  return "core"  # jdiff and its top-level modules (schedules, samplers, ..., _checks, keys)


def _modules() -> dict:
  files = sorted((ROOT / "jdiff").rglob("*.py")) + [ROOT / f"{c}.py" for c in CLIS]
  return {_module_name(p): p for p in files}


def _imports(path: pathlib.Path, modules: dict) -> set:
  """Every jdiff module ``path`` imports, at any depth of the file (function-local imports too);
  ``from jdiff.x import y`` counts as importing ``jdiff.x.y`` when that is a module."""
  out = set()
  for node in ast.walk(ast.parse(path.read_text())):
    names = []
    if isinstance(node, ast.Import):
      names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
    for n in names:
      while n and n not in modules:
        n = n.rpartition(".")[0]
      if n and n.startswith("jdiff"):
        out.add(n)
  own = _module_name(path) if path.is_relative_to(ROOT) else None
  return out - {own}


def _graph() -> dict:
  modules = _modules()
  graph = {m: _imports(p, modules) for m, p in modules.items()}
  for m in list(graph):  # importing a package runs its parents' __init__ (jdiff.x.y runs jdiff.x, jdiff)
    parts = m.split(".")
    for i in range(1, len(parts)):
      parent = ".".join(parts[:i])
      if parent in graph and parent != m:
        graph[m].add(parent)
  return graph


def _cycle(graph: dict):
  state, stack = {}, []

  def visit(m):
    state[m] = 1
    stack.append(m)
    for n in sorted(graph[m]):
      if state.get(n) == 1:
        return stack[stack.index(n):] + [n]
      if n not in state:
        found = visit(n)
        if found:
          return found
    state[m] = 2
    stack.pop()
    return None

  for m in sorted(graph):
    if m not in state:
      found = visit(m)
      if found:
        return found
  return None


def test_import_graph_has_no_cycle():
  graph = _graph()
  # A package's __init__ importing its own submodules is how a package exposes them, not a loop.
  graph = {m: {n for n in deps if not m.startswith(n + ".")} for m, deps in graph.items()}
  assert _cycle(graph) is None, " -> ".join(_cycle(graph))


def test_imports_point_downward_only():
  bad = []
  for m, deps in _graph().items():
    lm = LAYERS.index(_layer(m))
    bad += [f"{m} ({_layer(m)}) imports {d} ({_layer(d)})" for d in sorted(deps)
            if LAYERS.index(_layer(d)) > lm]
  assert not bad, "\n".join(bad)


def test_sample_and_eval_reach_nothing_of_training():
  graph = _graph()
  for cli in ("sample", "eval"):
    seen, todo = set(), [cli]
    while todo:
      m = todo.pop()
      if m not in seen:
        seen.add(m)
        todo += graph[m]
    assert not [m for m in seen if m.startswith("jdiff.training")], (cli, sorted(seen))


def test_the_checker_sees_function_local_imports_and_cycles(tmp_path):
  """The instrument itself: a function-local import counts, and a planted loop is found."""
  p = tmp_path / "m.py"
  p.write_text("def f():\n  from jdiff.training import loop\n")
  assert _imports(p, {"jdiff.training.loop": None, "jdiff.training": None, "jdiff": None}) == {
      "jdiff.training", "jdiff.training.loop"}
  assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
  assert _cycle({"a": {"b"}, "b": set()}) is None


def _modules_after(stmt):
  code = f"import sys; {stmt}; print(' '.join(sorted(sys.modules)))"
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                       cwd=ROOT)
  return set(out.stdout.split())


def test_core_imports_no_framework():
  mods = _modules_after("import jdiff")
  bad = sorted(m for m in mods if m.split(".")[0] in ("flax", "optax", "orbax", "tensorflow_datasets",
                                                        "tensorflow", "grain"))
  assert not bad, bad


def test_models_do_not_import_core():
  """Model code imports nothing from jdiff but ``jdiff.models`` and the shared ``jdiff._checks``
  (importing ``jdiff.models`` runs ``jdiff/__init__`` and so loads the core anyway)."""
  modules = _modules()
  for m, path in modules.items():
    if m.startswith("jdiff.models"):
      bad = [d for d in _imports(path, modules) if not d.startswith(("jdiff.models", "jdiff._checks"))
             and d != "jdiff"]
      assert not bad, f"{m} imports {bad}"
