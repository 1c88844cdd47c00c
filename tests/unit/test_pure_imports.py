import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "rlhf_ray"


def test_the_core_the_tasks_and_the_config_load_neither_ray_nor_vllm():
    pure = [f"rlhf_ray.{p.parent.name}.{p.stem}".removesuffix(".__init__")
            for folder in ("core", "tasks") for p in (PACKAGE / folder).glob("*.py")]
    assert "rlhf_ray.core.chat" in pure and "rlhf_ray.tasks" in pure
    code = (f"import sys, rlhf_ray.config, {', '.join(pure)}; "
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('ray', 'vllm')); "
            "print(bad); sys.exit(1 if bad else 0)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
