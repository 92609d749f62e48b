#!/usr/bin/env python3
"""Fails when a module of a Porchlight crate imports one that imports it back.

A module is one source file. It depends on another when it names it:
`crate::name` (a top-level module), `super::name` (a sibling) or
`self::name` / `name::` after a `mod name;` (a child). The crate root
(lib.rs, main.rs) only wires modules together and is left out, and so is a
file's `#[cfg(test)]` part. Prints every cycle, or the dependencies when
asked with --print.

    python3 tests/module-cycles.py [--print]
"""

import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
CRATES = ["core", "api", "runtime-image", "gateway", "controller", "tests/load"]


def module_name(src: pathlib.Path, f: pathlib.Path) -> str:
    rel = f.relative_to(src).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "mod":
        parts.pop()
    return "::".join(parts)


def dependencies(src: pathlib.Path) -> dict:
    files = {module_name(src, f): f for f in src.rglob("*.rs")}
    graph = {}
    for name, f in files.items():
        if name in ("lib", "main") or name.startswith("bin"):
            continue
        text = f.read_text()
        text = text.split("#[cfg(test)]", 1)[0]
        text = re.sub(r"//[^\n]*", "", text)
        parent = name.rsplit("::", 1)[0] if "::" in name else ""
        found = set()
        for m in re.finditer(r"\bcrate::([a-z_][a-z0-9_]*)", text):
            found.add(m.group(1))
        for m in re.finditer(r"\bsuper::([a-z_][a-z0-9_]*)", text):
            found.add(f"{parent}::{m.group(1)}" if parent else m.group(1))
        graph[name] = {d for d in found if d in files and d != name and d not in ("lib", "main")}
    return graph


def cycles(graph: dict) -> list:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def main() -> int:
    show = "--print" in sys.argv
    failed = False
    for crate in CRATES:
        src = ROOT / crate / "src"
        graph = dependencies(src)
        if show:
            print(f"== {crate}")
            for name in sorted(graph):
                print(f"  {name}: {' '.join(sorted(graph[name]))}")
        for component in cycles(graph):
            failed = True
            print(f"{crate}: import cycle among {', '.join(component)}")
    if not failed:
        print("no import cycles between modules in " + ", ".join(CRATES))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
