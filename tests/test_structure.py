"""The import structure: a ground floor under ``pushcut/`` that every package may use and that uses
none of them, arrows that point down only, no import cycle between files, and functions short
enough to read (read from the source, as pyproject maps the packages)."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"configs": "configs", "sim": "sim", "policy": "policy", "training": "training", "deploy": "deploy",
            "calibration": "calibration", "ros": "ros2_ws/src/pushcut_ros/pushcut_ros"}
TOP_FLOOR = {"pushcut.demo"}  # the demo runs every floor: it sits above them all
FORBIDDEN = {"ground": set(PACKAGES), "sim": {"deploy", "training", "ros"},
             "policy": {"training", "deploy", "ros"}, "deploy": {"training"}}
MAX_FUNCTION_LINES = 80


def modules() -> dict[str, Path]:
    """Every module of the pushcut namespace: dotted name -> file."""
    out = {f"pushcut.{f.stem}": f for f in (ROOT / "pushcut").glob("*.py") if f.stem != "__init__"}
    for pkg, folder in PACKAGES.items():
        for f in (ROOT / folder).rglob("*.py"):
            parts = f.relative_to(ROOT / folder).with_suffix("").parts
            parts = parts[:-1] if parts[-1] == "__init__" else parts
            out[".".join(("pushcut", pkg, *parts))] = f
    return out


def floor(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or parts[1] in PACKAGES else "ground"


def imports(module: str, path: Path, known: set[str]) -> set[str]:
    """The pushcut modules ``module`` imports, anywhere in the file (lazy imports count)."""
    out = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([base] if base else []))
            names = [f"{base}.{a.name}" for a in node.names] + [base]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name and name != module and name.startswith("pushcut."):
                out.add(name)
    return out


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {m: imports(m, f, set(mods)) for m, f in mods.items()}


def test_arrows_point_down_only():
    wrong = [f"{m} -> {i}" for m, deps in graph().items() if m not in TOP_FLOOR
             for i in deps if floor(i) in FORBIDDEN.get(floor(m), set())]
    assert not wrong, wrong


def test_no_import_cycle_between_files():
    g = graph()
    index, low, stack, on, cycles, counter = {}, {}, [], set(), [], [0]

    def visit(v):  # Tarjan's strongly connected components
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in g.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            scc = []
            while True:
                w = stack.pop()
                on.discard(w)
                scc.append(w)
                if w == v:
                    break
            if len(scc) > 1:
                cycles.append(sorted(scc))

    for v in list(g):
        if v not in index:
            visit(v)
    assert not cycles, cycles


def test_the_check_sees_a_wrong_arrow(tmp_path):
    """The checks above read real imports: a sim file importing deploy would be caught."""
    f = tmp_path / "env.py"
    f.write_text("from pushcut.deploy.broker import ActionChunkBroker\n")
    deps = imports("pushcut.sim.env", f, set(modules()))
    assert deps == {"pushcut.deploy.broker"} and floor("pushcut.deploy.broker") in FORBIDDEN["sim"]
    assert floor("pushcut.motion") == "ground" and floor("pushcut.configs") == "configs"


def test_no_function_is_longer_than_80_lines():
    long = []
    for f in [*modules().values(), *(ROOT / "bench").glob("*.py")]:
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long.append(f"{f.relative_to(ROOT)}:{node.lineno} {node.name} ({n} lines)")
    assert not long, long


def test_policies_are_loaded_in_one_place():
    """eval, serve and the policy node get their policy from ``load_policy``, never by building one."""
    mods = modules()
    builders = {"Engine", "TorchPolicy", "PolicyClient"}
    for name in ("pushcut.training.eval", "pushcut.deploy.serve", "pushcut.ros.policy_node"):
        tree = ast.parse(mods[name].read_text())
        built = {n.func.id if isinstance(n.func, ast.Name) else n.func.attr for n in ast.walk(tree)
                 if isinstance(n, ast.Call) and isinstance(n.func, (ast.Name, ast.Attribute))}
        assert not built & (builders | {"from_checkpoint"}), (name, built & builders)
        assert "load_policy" in built, name


def test_every_policy_declares_the_one_interface():
    from pushcut.deploy.client import PolicyClient
    from pushcut.deploy.engine import Engine
    from pushcut.interface import Policy
    from pushcut.policy.inference import TorchPolicy

    for cls in (Engine, TorchPolicy, PolicyClient):
        assert issubclass(cls, Policy), cls
        assert all(getattr(cls, m) is not getattr(Policy, m) for m in ("infer", "instruction_problem")), cls
