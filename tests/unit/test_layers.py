"""The layers point one way: no process role imports another role, and nothing below the roles imports one.

Every module of the package is parsed with ``ast`` (nothing is imported) and every import statement counts,
including those inside functions. The roles are ``ingest``, ``workers``, ``writer`` and ``daemon``; what they share
lives below them (``transport.child``, ``images``, ``protocol``, ...). The daemon starts the other roles and may
import the few modules listed in :data:`ALLOWED`, each with its reason.
"""

from __future__ import annotations

import ast
from pathlib import Path

import ringstream

PACKAGE = Path(ringstream.__file__).parent

#: the process roles: one subpackage each
ROLES = ("ingest", "workers", "writer", "daemon")

#: what lies below the roles: it imports none of them
BELOW = ("protocol", "transport", "geometry", "engines", "fitting", "images", "errors", "params", "procs", "config",
         "runs")

#: (importing module, imported module) pairs that cross the rule on purpose
ALLOWED = {
    ("ringstream.daemon.supervisor", "ringstream.writer.process"):
        "the writer's entry module: its output checks run before any child starts",
    ("ringstream.daemon.cli", "ringstream.writer.outputs"):
        "offline `ringstream integrate` writes through the writer's sinks",
    ("ringstream.daemon.cli", "ringstream.writer.hdf5"):
        "offline `ringstream integrate` checks its output path as the writer does",
    ("ringstream.daemon.cli", "ringstream.writer.export"): "`ringstream export` is the writer's export",
    ("ringstream.daemon.cli", "ringstream.writer.repair"): "`ringstream repair` is the writer's repair",
    ("ringstream.daemon.join", "ringstream.workers.process"):
        "`ringstream worker --join` runs the worker role's entry in its own process (a worker of another host has no "
        "supervisor to spawn it)",
    ("ringstream.daemon.cli", "ringstream.ingest.dectris_sim"):
        "`ringstream dectris-sim` is the stand-in detector of the ingest's DECTRIS source, sharing its message codec",
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path) -> set[str]:
    """Every module ``path`` imports, absolute, at any depth of the file (``from a import b`` gives ``a`` and
    ``a.b``: ``b`` may be a submodule)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.add(target)
            found.update(f"{target}.{alias.name}" for alias in node.names)
    return found


def layer_of(module: str) -> str | None:
    """The top-level part of ``ringstream`` that ``module`` belongs to (None: not ringstream's)."""
    parts = module.split(".")
    if parts[0] != "ringstream" or len(parts) < 2:
        return None
    return parts[1]


def violations() -> list[str]:
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        importer = module_name(path)
        own = layer_of(importer)
        if own not in ROLES + BELOW:
            continue
        for target in sorted(imports_of(path)):
            other = layer_of(target)
            if other not in ROLES or other == own:
                continue
            if any(importer == a and (target == b or target.startswith(b + ".")) for a, b in ALLOWED):
                continue
            kind = "role" if own in ROLES else "lower layer"
            out.append(f"{importer} ({kind} {own}) imports {target} (role {other})")
    return out


def test_the_walker_sees_imports_inside_functions():
    # the supervisor imports the writer's entry module inside a method; the workers import the shared plumbing
    assert "ringstream.writer.process" in imports_of(PACKAGE / "daemon" / "supervisor.py")
    assert "ringstream.transport.child" in imports_of(PACKAGE / "workers" / "process.py")
    assert module_name(PACKAGE / "transport" / "__init__.py") == "ringstream.transport"


def test_no_role_imports_another_role_and_no_lower_layer_imports_a_role():
    found = violations()
    assert not found, "imports across the layers:\n" + "\n".join(found)


def test_every_role_uses_the_shared_child_plumbing():
    for role in ("ingest", "workers", "writer"):
        assert "ringstream.transport.child" in imports_of(PACKAGE / role / "process.py"), role
    assert "ringstream.transport.child" in imports_of(PACKAGE / "daemon" / "supervisor.py")
