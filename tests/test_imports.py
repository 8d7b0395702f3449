"""Imports point one way, and no module reaches into another subpackage's private names.

cli -> serve, training, integrations -> evaluation, bench -> inference -> model; data and
checkpoint beside them; errors, device and progress at the bottom. Inside data and training, modules
are layered too: the reader of prepared data (shards) never loads the writer (prepare), and
the arguments, schedule and processes of a run never the loop. Read from the source (every
import, also those inside functions), so a new arrow the wrong way fails here.
"""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "photon"
# What each part may import besides itself. A part not listed may import nothing of photon.
ALLOWED = {
    "errors": set(),
    "device": {"errors"},
    "locking": {"errors"},
    "progress": set(),
    "model": {"errors"},
    "data": {"errors", "locking", "progress"},
    "checkpoint": {"errors", "device", "model", "data"},
    "inference": {"errors", "device", "model"},
    "evaluation": {"errors", "device", "model", "inference", "data", "progress"},
    "bench": {"errors", "device", "model", "inference"},
    "training": {"errors", "device", "model", "data", "checkpoint", "evaluation", "locking",
                 "progress"},
    "serve": {"errors", "device", "model", "inference", "data"},
    "integrations": {"errors", "device", "model", "data", "checkpoint", "inference",
                     "evaluation", "progress"},
    "cli": {"errors", "device", "model", "data", "checkpoint", "inference", "evaluation",
            "bench", "training", "serve", "integrations", "progress"},
    "__init__": {"errors", "model", "data", "checkpoint"},
    "__main__": {"cli"},
}
# Inside these parts a module may import only the modules listed before it.
LAYERS = {
    "data": ["tokenizer", "sources", "shards", "corpus", "prepare", "corpora"],
    "training": ["args", "schedule", "parallel", "train"],
}
# `model.generate(...)` is the one convenience that calls back into inference, imported
# lazily inside the method (as transformers' models offer generate).
EXCEPTIONS = {("model/lm.py", "photon.inference.generate")}


def _imports(path: Path) -> list[tuple[str, list[str]]]:
    """(module, imported names) of every `import photon...` / `from photon... import` in a
    file, at any depth; relative imports are resolved against the file's package."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(a.name, []) for a in node.names if a.name.startswith("photon")]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("photon"):
            found.append((node.module, [a.name for a in node.names]))
    return found


def _part(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _violations(package: Path = PACKAGE) -> list[str]:
    bad = []
    for path in sorted(package.rglob("*.py")):
        rel = path.relative_to(package).as_posix()
        own = rel.split("/")[0].removesuffix(".py")
        for module, names in _imports(path):
            target = _part(module)
            if module == "photon" and names:  # `from photon import x` names a part
                targets = [n for n in names if (package / n).exists()
                           or (package / f"{n}.py").exists()]
            else:
                targets = [target]
            for t in targets:
                if t != own and t not in ALLOWED[own] and (rel, module) not in EXCEPTIONS:
                    bad.append(f"{rel} imports {module} ({own} -> {t})")
            if target != own:
                bad += [f"{rel} imports the private name {module}.{n}" for n in names
                        if n.startswith("_") and not n.startswith("__")]
            elif own in LAYERS:
                bad += _layer_violation(rel, module, names, LAYERS[own])
    return bad


def _layer_violation(rel: str, module: str, names: list[str], layers: list[str]) -> list[str]:
    """`rel` importing a module of its own part that is not listed before it in `layers`
    (a module missing from `layers` counts as listed last: a new module must be placed)."""
    order = {name: i for i, name in enumerate(layers)}
    own = rel.split("/")[-1].removesuffix(".py")
    parts = module.split(".")
    targets = [parts[2]] if len(parts) > 2 else names  # `from photon.data import x` names x
    return [f"{rel} imports {module} ({own} is layered below {t})" for t in targets
            if order.get(t, len(layers)) >= order.get(own, len(layers))]


def test_imports_point_one_way_and_no_private_name_crosses_a_subpackage():
    assert _violations() == []


def test_the_check_sees_a_wrong_arrow(tmp_path):
    """The rule is not vacuous: a model module importing serve, or a private name, fails;
    so does the reader of prepared data importing the writer."""
    fake = tmp_path / "photon"
    (fake / "model").mkdir(parents=True)
    (fake / "model" / "x.py").write_text("from photon.serve.engine import Engine\n"
                                         "def f():\n    from photon.inference.g import _h\n")
    (fake / "data").mkdir()
    (fake / "data" / "shards.py").write_text("from photon.data.prepare import prepare\n"
                                             "from photon.data import corpus\n")
    assert _violations(fake) == [
        "data/shards.py imports photon.data.prepare (shards is layered below prepare)",
        "data/shards.py imports photon.data (shards is layered below corpus)",
        "model/x.py imports photon.serve.engine (model -> serve)",
        "model/x.py imports photon.inference.g (model -> inference)",
        "model/x.py imports the private name photon.inference.g._h"]
