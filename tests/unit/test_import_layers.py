"""The layering of ARCHITECTURE.md, read from the source (every import, also those inside functions): a
module's layer is its folder, imports only point down, and the pure core reaches no I/O, Ray or vLLM."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "rlhf_ray"
# Bottom to top. A module sits in its folder's layer; files directly in rlhf_ray/ are the I/O and
# plumbing layer (config, models, data, storage, manifest, tracking, report, ...).
LAYERS = ["core", "tasks", "", "engines|train", "serve", "stages", "cli"]
# What the pure core and the tasks must never reach, however indirectly: no model loading, no files
# or object storage, no Ray, no vLLM, no trackers.
IO_MODULES = {"rlhf_ray.models", "rlhf_ray.storage", "rlhf_ray.data", "rlhf_ray.tracking", "rlhf_ray.manifest",
              "rlhf_ray.report", "rlhf_ray.model_card", "rlhf_ray.cluster"}
FORBIDDEN_LIBRARIES = {"ray", "vllm", "mlflow", "wandb", "pyarrow", "fsspec", "s3fs"}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imports(path: Path, known: set[str]) -> tuple[set[str], set[str]]:
    """(modules of the package and ``jobs`` that ``path`` imports, top-level names of the libraries it
    imports), at any depth of its code."""
    out, libraries = set(), set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out |= {f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in known else node.module for a in node.names}
    libraries = {m.split(".")[0] for m in out}
    return {m for m in out if m in known or m.split(".")[0] == "jobs"}, libraries


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {m: imports(p, set(mods))[0] for m, p in mods.items()}


def folder(module: str) -> str:
    parts = module.split(".")
    mods = modules()
    is_package = mods[module].name == "__init__.py" if module in mods else False
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and is_package) else ""


def rank(module: str) -> int:
    return next(i for i, names in enumerate(LAYERS) if folder(module) in names.split("|"))


def closure(g: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for n in g.get(todo.pop(), ()):
            if n not in seen:
                seen.add(n)
                todo.append(n)
    return seen


def test_every_folder_of_the_package_is_a_layer():
    folders = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert folders == {f for names in LAYERS for f in names.split("|") if f}


def test_imports_point_down_never_up():
    g = graph()
    for m, deps in g.items():
        for d in deps:
            if d.startswith("rlhf_ray."):
                assert rank(d) <= rank(m), f"{m} ({folder(m) or 'rlhf_ray/'}) imports {d} ({folder(d) or 'rlhf_ray/'})"


def test_folders_of_one_layer_do_not_import_each_other():
    # Training and the engines are side by side: scoring and generation never load a trainer, and the
    # trainer never starts an engine.
    g = graph()
    for m, deps in g.items():
        for d in deps:
            if d.startswith("rlhf_ray.") and rank(d) == rank(m):
                assert folder(d) == folder(m), f"{m} imports {d}"


def test_scoring_and_serving_never_reach_training():
    g = graph()
    for m in g:
        if folder(m) in ("engines", "serve") or m == "rlhf_ray.stages.scoring":
            assert not {x for x in closure(g, m) if x.startswith("rlhf_ray.train")}, m


def test_the_core_and_the_tasks_reach_no_io_ray_or_vllm():
    mods = modules()
    g = graph()
    for m, path in mods.items():
        if folder(m) not in ("core", "tasks"):
            continue
        reached = closure(g, m)
        assert not reached & IO_MODULES, (m, sorted(reached & IO_MODULES))
        for x in reached | {m}:
            assert not imports(mods[x], set(mods))[1] & FORBIDDEN_LIBRARIES, x


def test_the_package_never_imports_jobs():
    offenders = {m: sorted(d) for m, d in graph().items() if any(x.split(".")[0] == "jobs" for x in d)}
    assert not offenders


def test_no_import_cycle():
    g = graph()
    for m in g:
        assert m not in closure(g, m), f"{m} imports itself through {sorted(closure(g, m))}"


def test_jobs_are_entry_points():
    for job in (ROOT / "jobs").glob("*.py"):
        text = job.read_text()
        assert len(text.splitlines()) <= 60, job.name
        assert "sys.path" not in text and "from jobs" not in text and "import jobs" not in text, job.name
