import subprocess
import sys


def test_pure_modules_load_neither_ray_nor_vllm():
    code = ("import sys, rlhf_ray.chat, rlhf_ray.losses, rlhf_ray.selection, rlhf_ray.schema, rlhf_ray.config, rlhf_ray.judge, "
            "rlhf_ray.arithmetic, rlhf_ray.categories, rlhf_ray.tasks; "
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('ray', 'vllm')); "
            "print(bad); sys.exit(1 if bad else 0)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
