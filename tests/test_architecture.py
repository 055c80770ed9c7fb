"""The import graph of the package: no circles, and each layer imports only what it may.

Read from the sources with ``ast``, so every import counts wherever it is written (module
level, inside a function, under ``TYPE_CHECKING``), and so does a *hidden* one: a string
that names one of our modules (``importlib.import_module("...")``, a table of lazy
names). ``patches/`` is the package ``crypten_mpcache.patches`` (pyproject's package-dir).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "crypten_mpcache"
PATCHES = f"{PACKAGE}.patches"

# What each patch may import of ours: the code it hooks in, and nothing else.
PATCH_NEEDS = {
    f"{PATCHES}.crypten_compat": {f"{PACKAGE}.runtime.launcher"},  # run_multiprocess
    f"{PATCHES}.crypten_comparison": {f"{PACKAGE}.secure.primitives",
                                      f"{PACKAGE}.secure.primitives.comparison",
                                      f"{PACKAGE}.secure.primitives.dcf_comparison",
                                      f"{PACKAGE}.secure.primitives.select"},
    f"{PATCHES}.crypten_dealer": {f"{PACKAGE}.runtime.offline",
                                  f"{PACKAGE}.secure.primitives",
                                  f"{PACKAGE}.secure.primitives.comparison_dealer",
                                  f"{PACKAGE}.secure.primitives.dcf_dealer",
                                  f"{PACKAGE}.secure.primitives.onehot_dealer",
                                  f"{PACKAGE}.secure.primitives.opened_input",
                                  f"{PACKAGE}.secure.primitives.premask_dealer"},
    f"{PATCHES}.crypten_distributed": {f"{PACKAGE}.runtime.opening"},
    f"{PATCHES}.crypten_settings": set(),
    f"{PATCHES}.transformers_llama": {f"{PACKAGE}.models", f"{PACKAGE}.models.llama"},
}


def _module_files() -> dict[str, Path]:
    """Module name -> source file, for the package and the patches folder."""
    files = {}
    for folder, prefix in ((ROOT / PACKAGE, (PACKAGE,)), (ROOT / "patches", (PACKAGE, "patches"))):
        for path in folder.rglob("*.py"):
            parts = prefix + path.relative_to(folder).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            files[".".join(parts)] = path
    return files


MODULES = _module_files()


def _is_package(module: str) -> bool:
    return MODULES[module].name == "__init__.py"


def _ours(name: str) -> str | None:
    """The longest prefix of ``name`` that is one of our modules (None: not ours)."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in MODULES:
            return candidate
    return None


def _absolute(module: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".")
    base = base if _is_package(module) else base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(module: str) -> set[str]:
    """Our modules that ``module`` imports anywhere in its source, hidden ones included."""
    tree = ast.parse(MODULES[module].read_text(), filename=str(MODULES[module]))
    found: set[str | None] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(_ours(alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            source = _absolute(module, node)
            for alias in node.names:  # ``from pkg import submodule`` imports the submodule
                found.add(_ours(f"{source}.{alias.name}") or _ours(source))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) \
                and "." in node.value and node.value in MODULES:  # a dotted module name
            found.add(node.value)
    found.discard(None)
    found.discard(module)
    return found  # type: ignore[return-value]


GRAPH = {module: imports_of(module) for module in MODULES}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(graph[node]):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return out


def test_the_graph_sees_every_kind_of_import():
    assert f"{PACKAGE}.runtime.launcher" in GRAPH[f"{PATCHES}.crypten_compat"]  # in a function
    assert f"{PACKAGE}.private" in GRAPH[PACKAGE]                               # a lazy name
    dealer_imports = GRAPH[f"{PATCHES}.crypten_dealer"]
    assert f"{PACKAGE}.secure.primitives.comparison_dealer" in dealer_imports  # pkg import


def test_no_import_circles():
    assert _cycles(GRAPH) == []


def test_algorithm_imports_neither_secure_nor_plaintext():
    forbidden = (f"{PACKAGE}.secure", f"{PACKAGE}.plaintext")
    bad = {module: sorted(t for t in targets if t.startswith(forbidden))
           for module, targets in GRAPH.items() if module.startswith(f"{PACKAGE}.algorithm")}
    assert {m: t for m, t in bad.items() if t} == {}


# The layers of ``secure``, bottom first: a layer imports only the secure layers below it
# (and itself), plus the other packages of ours listed with it.
SECURE = f"{PACKAGE}.secure"
SECURE_LAYERS = {
    f"{SECURE}.primitives": {"runtime"},
    f"{SECURE}.functions": {"runtime", "algorithm"},
    f"{SECURE}.backend": {"runtime", "algorithm", "patches"},
    f"{SECURE}.cache": {"runtime", "algorithm", "patches", "config"},
}


def _secure_layer(module: str) -> str | None:
    return next((layer for layer in SECURE_LAYERS
                 if module == layer or module.startswith(f"{layer}.")), None)


def test_every_secure_module_sits_in_a_layer():
    loose = [m for m in MODULES if m.startswith(f"{SECURE}.") and _secure_layer(m) is None]
    assert loose == []


def test_secure_layers_import_only_downwards():
    order = list(SECURE_LAYERS)
    bad = {}
    for module, targets in GRAPH.items():
        layer = _secure_layer(module)
        if layer is None:
            continue
        allowed = set(order[: order.index(layer) + 1])
        outside = {f"{PACKAGE}.{name}" for name in SECURE_LAYERS[layer]}
        wrong = sorted(t for t in targets
                       if not any(t == a or t.startswith(f"{a}.") for a in allowed | outside))
        if wrong:
            bad[module] = wrong
    assert bad == {}


def test_secure_package_files_hold_no_logic():
    for module in MODULES:
        if module.startswith(SECURE) and _is_package(module):
            body = ast.parse(MODULES[module].read_text()).body
            assert len(body) == 1 and isinstance(body[0], ast.Expr), module  # the docstring


MAX_LINES = 350


def test_no_module_is_longer_than_the_limit():
    long = {m: n for m in MODULES if (n := len(MODULES[m].read_text().splitlines())) > MAX_LINES}
    assert not long, long


def test_every_module_says_its_concern_on_its_first_docstring_line():
    for module, path in MODULES.items():
        docstring = ast.get_docstring(ast.parse(path.read_text()), clean=False)
        first = (docstring or "").split("\n")[0].strip()
        assert first and first[-1] in ".?", f"{module}: {first!r}"


def test_patches_import_only_what_their_fix_needs():
    for module, targets in GRAPH.items():
        if not module.startswith(PATCHES) or module == PATCHES:
            continue
        extra = targets - {PATCHES} - PATCH_NEEDS.get(module, set())
        assert not extra, f"{module} imports {sorted(extra)}"


def test_importing_the_package_changes_crypten_by_the_compat_fixes_only():
    script = """
import crypten_mpcache
from crypten.mpc.mpc import MPCTensor
from crypten.mpc.provider.ttp_provider import TTPClient, TTPServer
from crypten_mpcache.patches import crypten_comparison, crypten_compat, crypten_dealer
assert all(p.installed for p in crypten_compat.PATCHES)
assert not crypten_dealer.PATCH.installed and not crypten_dealer.TRAFFIC_PATCH.installed
assert not crypten_comparison.PATCH.installed
assert not hasattr(TTPServer, "premask_triple")
assert MPCTensor._ltz.__module__ == "crypten.mpc.mpc"
assert set(crypten_mpcache.__all__) <= set(dir(crypten_mpcache))
for name in crypten_mpcache.__all__:
    getattr(crypten_mpcache, name)
print("OK")
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          cwd=ROOT, timeout=300)
    assert done.returncode == 0 and "OK" in done.stdout, done.stderr[-2000:]
