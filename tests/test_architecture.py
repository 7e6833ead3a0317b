"""Checks of the code's shape that any reviewer can run (docs/design.md, "Layers"):

* imports only point down -- fdet (the console command) -> benchmarks -> export -> distill -> runtime -- and
  ``runtime`` imports ``distill`` only in its PyTorch backend (the deployment core runs without torch);
* no import cycle between the modules of the packages (imports inside functions count too: a lazy
  import that closes a circle is still a circle);
* no function longer than 80 lines, except the command-line / config flag tables;
* no block of 6 or more code lines written twice in the packages.
"""
from __future__ import annotations

import ast
import hashlib
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("runtime", "distill", "export", "benchmarks", "fdet")
LAYER = {"runtime": 0, "distill": 1, "export": 2, "benchmarks": 3, "fdet": 4}
TORCH_BACKEND = "runtime.backends.torch_backend"
MAX_FUNCTION_LINES = 80
TABLE_FUNCTIONS = {"build_parser", "_flag_table", "add_arguments"}     # argument / flag tables: long by nature
MIN_COPY_LINES = 6


def modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


MODULES = modules()


def _resolve(name: str, current: str, is_pkg: bool, level: int) -> str:
    if not level:
        return name
    base = current.split(".") if is_pkg else current.split(".")[:-1]
    base = base[:len(base) - (level - 1)]
    return ".".join([*base, name] if name else base)


def _known(name: str) -> str | None:
    """The longest known module that ``name`` is or lies in (``distill.kd.session.X`` -> ``distill.kd.session``)."""
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        cand = ".".join(parts[:i])
        if cand in MODULES:
            return cand
    return None


def imports_of(mod: str) -> set[str]:
    path = MODULES[mod]
    tree = ast.parse(path.read_text(), str(path))
    is_pkg = path.name == "__init__.py"
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(node.module or "", mod, is_pkg, node.level)
            names = [f"{base}.{a.name}" for a in node.names] + [base]
        else:
            continue
        for n in names:
            k = _known(n)
            if k is not None and k != mod:
                found.add(k)
    return found


GRAPH = {m: imports_of(m) for m in MODULES}


def test_imports_only_point_down():
    bad = []
    for mod, deps in GRAPH.items():
        for dep in deps:
            src, dst = mod.split(".")[0], dep.split(".")[0]
            if mod == TORCH_BACKEND and dst == "distill":
                continue                  # the PyTorch backend runs checkpoints: it needs the training package
            if src == "runtime" and dst == "distill":
                bad.append(f"{mod} -> {dep} (only {TORCH_BACKEND} may import distill)")
            elif LAYER[dst] > LAYER[src]:
                bad.append(f"{mod} -> {dep}")
    assert not bad, "imports against the layers:\n" + "\n".join(sorted(bad))


def _cycles() -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), ignoring package -> own submodule
    edges of ``__init__`` re-exports (a package importing its children is not a circle by itself)."""
    graph = {m: {d for d in deps if not d.startswith(m + ".")} for m, deps in GRAPH.items()}
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles():
    cycles = _cycles()
    assert not cycles, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_no_function_over_80_lines():
    long = []
    for mod, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name not in TABLE_FUNCTIONS:
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({n} lines)")
    assert not long, "functions over 80 lines:\n" + "\n".join(long)


def _code_lines(path: Path) -> list[tuple[int, str]]:
    """(line number, normalised text) of the lines that carry code: no blanks, comments, imports, docstrings
    or lone punctuation."""
    text = path.read_text()
    doc_lines = set()
    for node in ast.walk(ast.parse(text)):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr) and isinstance(
                getattr(body[0], "value", None), ast.Constant) and isinstance(body[0].value.value, str):
            doc_lines.update(range(body[0].lineno, body[0].end_lineno + 1))
    out = []
    for i, line in enumerate(text.splitlines(), 1):
        s = " ".join(line.split("#")[0].split()) if "#" in line and "'" not in line and '"' not in line else " ".join(line.split())
        if (not s or i in doc_lines or s.startswith(("import ", "from ", "#", "@")) or
                all(c in "()[]{},:" for c in s)):
            continue
        out.append((i, s))
    return out


def test_no_copied_blocks():
    seen: dict[str, tuple[str, int]] = {}
    copies = defaultdict(set)
    for mod, path in MODULES.items():
        lines = _code_lines(path)
        for j in range(len(lines) - MIN_COPY_LINES + 1):
            window = [s for _, s in lines[j:j + MIN_COPY_LINES]]
            key = hashlib.sha1("\n".join(window).encode()).hexdigest()
            here = (str(path.relative_to(ROOT)), lines[j][0])
            if key in seen and seen[key][0] != here[0]:
                copies[(seen[key][0], here[0])].add((seen[key][1], here[1]))
            seen.setdefault(key, here)
    report = [f"{a}:{min(p)[0]} ~ {b}:{min(p)[1]} ({len(p)} windows)" for (a, b), p in sorted(copies.items())]
    assert not report, f"blocks of {MIN_COPY_LINES}+ code lines written twice:\n" + "\n".join(report)


@pytest.mark.parametrize("pkg", PACKAGES)
def test_one_typing_style(pkg):
    """Built-in generics (``list[int]``, ``X | None``) everywhere, never typing.Dict / List / Optional / Tuple."""
    old = []
    for mod, path in MODULES.items():
        if mod.split(".")[0] != pkg:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module == "typing":
                names = {a.name for a in node.names} & {"Dict", "List", "Optional", "Tuple", "Set", "Union"}
                if names:
                    old.append(f"{path.relative_to(ROOT)}: {', '.join(sorted(names))}")
    assert not old, "typing-module generics:\n" + "\n".join(old)
