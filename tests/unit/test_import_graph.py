"""The executor's imports point one way: each subpackage imports only from layers below it (and from hwprofiles and
planner), no module imports another in a cycle, and nothing registers with transformers on import.

Layers, bottom to top (executor/__init__.py draws the same map):

    settings, faults        typed knobs and errors
    runtime                 streams, events, timing, GPU and host memory, NUMA
    kv, attention           the stores; the attention kernels
    engine                  the per-layer offload loop, the transformers registration and cache
    parallel                pipeline stages over several devices
    generation              the run loop, CUDA-graph decode, warm-up, tail probe, the Measurement
    report, inputs          the report; model and prompt loading
    api, profiler           the entry points
    launch                  several processes by heads (tensor parallelism): each rank runs api.run_plan
The check reads the source with ``ast``: no torch needed.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
EXECUTOR = ROOT / "executor"

LAYER = {"settings": 0, "faults": 0, "runtime": 1, "kv": 2, "attention": 2, "engine": 3, "parallel": 4,
         "generation": 5, "report": 6, "inputs": 6, "api": 7, "profiler": 7,
         "launch": 8}


def _part(module: str) -> str:
    """'executor.kv.host_store' -> 'kv'; 'executor.api' -> 'api'."""
    return module.split(".")[1]


def _modules() -> dict[str, Path]:
    out = {}
    for path in EXECUTOR.rglob("*.py"):
        rel = path.relative_to(ROOT).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """executor modules imported anywhere in the file (top level and inside functions); ``from pkg import sub``
    of a submodule counts as importing the submodule only."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("executor"):
            subs = {f"{node.module}.{alias.name}" for alias in node.names}
            found.update(subs & modules.keys())
            if subs - modules.keys():
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("executor"))
    return found


def test_every_module_sits_in_a_known_layer():
    unknown = sorted(m for m in _modules() if m != "executor" and _part(m) not in LAYER)
    assert not unknown, f"add these to the layer map (and executor/__init__.py): {unknown}"


def test_imports_point_down_the_layers():
    modules = _modules()
    upward = []
    for module, path in modules.items():
        if module == "executor":
            continue
        for target in _imports(path, modules):
            if target not in modules or target == "executor":
                continue
            source_part, target_part = _part(module), _part(target)
            if source_part != target_part and LAYER[target_part] >= LAYER[source_part]:
                upward.append(f"{module} -> {target}")
    assert not upward, "imports against the layer order:\n" + "\n".join(sorted(upward))


def test_no_import_cycle():
    modules = _modules()
    graph = {m: {t for t in _imports(p, modules) if t in modules and t not in (m, "executor")}
             for m, p in modules.items()}
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in graph[node]:
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt] if nxt in stack else [node, nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = 2

    for module in graph:
        if module not in state:
            visit(module, [module])
    assert not cycles, f"import cycles: {cycles}"


def test_nothing_registers_on_import():
    """AttentionInterface.register runs only inside a function (engine/registration.py), never at module level."""
    offenders = []
    for module, path in _modules().items():
        for node in ast.parse(path.read_text()).body:
            text = ast.unparse(node)
            if isinstance(node, ast.Expr) and ".register(" in text:
                offenders.append(f"{module}: {text[:80]}")
    assert not offenders, offenders


def test_no_mutable_switches_at_module_level():
    """Switches are typed options passed in (executor/settings.py), not module globals a benchmark patches: no
    module-level boolean or None assignment in upper-case outside settings (constants are numbers or tuples)."""
    offenders = []
    for module, path in _modules().items():
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, (ast.Assign, ast.AnnAssign)):
                value = node.value
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                names = [t.id for t in targets if isinstance(t, ast.Name)]
                if (any(n.isupper() for n in names) and isinstance(value, ast.Constant)
                        and (value.value is None or isinstance(value.value, bool))):
                    offenders.append(f"{module}: {names}")
    assert not offenders, offenders
