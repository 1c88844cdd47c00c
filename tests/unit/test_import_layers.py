"""The layering of ARCHITECTURE.md, read from the source (every import, also those inside functions):
pure core ← models, data, storage ← Ray shells ← stages ← jobs; scoring and serving never import
training; no import cycle anywhere in the package."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "rlhf_ray"
# The pure core: plain functions over rows, tokens and tensors; no Ray, no I/O shells above it.
CORE = {"schema", "chat", "losses", "selection", "stats", "evaluation", "config", "rewards", "arithmetic", "categories",
        "tasks", "objectives", "manifest"}
# Ray and engine shells over the core (the judge holds its vLLM and OpenAI backends).
SHELLS = {"generate", "score", "serve", "judge", "cluster", "train"}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imports(path: Path, known: set[str]) -> set[str]:
    """Modules of the package (and ``jobs``) that ``path`` imports, at any depth of its code."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out |= {f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in known else node.module for a in node.names}
    return {m for m in out if m in known or m.split(".")[0] == "jobs"}


def graph() -> dict[str, set[str]]:
    mods = modules()
    packages = {m for m, p in mods.items() if p.name == "__init__.py"}
    return {m: imports(p, set(mods)) - packages for m, p in mods.items() if m not in packages}


def closure(g: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for n in g.get(todo.pop(), ()):
            if n not in seen:
                seen.add(n)
                todo.append(n)
    return seen


def layer(module: str) -> str:
    name = module.split(".")[1]
    return "core" if name in CORE else "shell" if name in SHELLS else "stage" if name == "stages" else "other"


def test_the_package_never_imports_jobs():
    offenders = {m: sorted(d) for m, d in graph().items() if any(x.split(".")[0] == "jobs" for x in d)}
    assert not offenders


def test_scoring_and_serving_never_import_training():
    g = graph()
    for m in ("rlhf_ray.score", "rlhf_ray.serve", "rlhf_ray.generate", "rlhf_ray.judge", "rlhf_ray.stages.scoring"):
        assert not {x for x in closure(g, m) if x.startswith("rlhf_ray.train")}, m


def test_the_core_imports_no_shell_or_stage_and_shells_import_no_stage():
    g = graph()
    for m in g:
        reached = {layer(x) for x in closure(g, m)}
        if layer(m) == "core":
            assert not reached & {"shell", "stage"}, (m, sorted(closure(g, m)))
        if layer(m) == "shell":
            assert "stage" not in reached, (m, sorted(closure(g, m)))


def test_no_import_cycle():
    g = graph()
    for m in g:
        assert m not in closure(g, m), f"{m} imports itself through {sorted(closure(g, m))}"


def test_jobs_are_entry_points():
    for job in (ROOT / "jobs").glob("*.py"):
        text = job.read_text()
        assert len(text.splitlines()) <= 60, job.name
        assert "sys.path" not in text and "from jobs" not in text and "import jobs" not in text, job.name
