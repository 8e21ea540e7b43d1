"""The core imports no Flax, Optax, orbax or TFDS (DESIGN.md layering); models never import the core."""
import subprocess
import sys


def _modules_after(stmt):
  code = f"import sys; {stmt}; print(' '.join(sorted(sys.modules)))"
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
  return set(out.stdout.split())


def test_core_imports_no_framework():
  mods = _modules_after("import jdiff")
  bad = sorted(m for m in mods if m.split(".")[0] in ("flax", "optax", "orbax", "tensorflow_datasets",
                                                        "tensorflow"))
  assert not bad, bad


def test_models_do_not_import_core():
  """Source check (importing ``jdiff.models`` runs ``jdiff/__init__`` and so loads the core anyway):
  model code imports nothing from jdiff but ``jdiff.models`` and the shared ``jdiff._checks``."""
  import ast
  import pathlib
  root = pathlib.Path(__file__).resolve().parents[1] / "jdiff" / "models"
  for path in root.glob("*.py"):
    for node in ast.walk(ast.parse(path.read_text())):
      names = []
      if isinstance(node, ast.ImportFrom) and node.module:
        names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
      elif isinstance(node, ast.Import):
        names = [a.name for a in node.names]
      for n in names:
        if n.startswith("jdiff") and n != "jdiff":
          assert n.startswith(("jdiff.models", "jdiff._checks")), f"{path.name} imports {n}"
