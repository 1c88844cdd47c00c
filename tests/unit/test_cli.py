"""The installed command as a new user meets it: every stage's --help (what it writes, every key it reads
with type, default and meaning), the example configs (list, show resolved, copy), the jobs/ aliases, and
the config reference that is generated, not written."""
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from rlhf_ray import config_load
from rlhf_ray.cli import main, reference
from rlhf_ray.cli.stages import STAGES
from rlhf_ray.config import PipelineConfig

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


@pytest.mark.parametrize("command", sorted(STAGES))
def test_every_stage_says_what_it_does_and_every_key_it_reads(command, capsys):
    assert main.main([command, "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: rlhf-ray {command} CONFIG [key=value ...]")
    assert STAGES[command].doc.splitlines()[0] in out
    keys = [k for k, *_ in reference.rows(PipelineConfig)]
    for section in STAGES[command].sections:
        mine = [k for k in keys if (k.split(".")[0] if "." in k else "") == section]
        assert mine and all(f"  {k} (" in out for k in mine), (section, mine)


def test_a_key_is_listed_with_its_type_default_comment_and_allowed_values(capsys):
    main.main(["sft", "--help"])
    out = capsys.readouterr().out
    assert ("  sft.train.global_batch_size (int, default 256): sequences per optimizer step, over all workers; "
            "must be an integer >= 1") in out
    main.main(["train-rm", "--help"])  # a section whose defaults differ from its class's shows its own
    assert "  reward.train.lr (float, default 3e-05)" in capsys.readouterr().out


def test_the_jobs_are_aliases_of_the_command_and_the_command_is_installed():
    job = subprocess.run([sys.executable, "jobs/sft.py", "--help"], cwd=REPO, capture_output=True, text=True,
                         timeout=120)
    assert job.returncode == 0 and job.stdout.startswith("usage: rlhf-ray sft CONFIG"), job.stderr
    listed = subprocess.run([str(BIN / "rlhf-ray"), "config", "list"], capture_output=True, text=True, timeout=120)
    assert listed.returncode == 0 and "tiny" in listed.stdout, listed.stderr
    bare = subprocess.run([sys.executable, "jobs/score.py"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert bare.returncode == 2 and bare.stdout.startswith("usage: rlhf-ray score CONFIG")


def test_config_show_prints_the_resolved_config_and_cp_copies_an_example(tmp_path, capsys, monkeypatch):
    import yaml

    monkeypatch.chdir(tmp_path)
    assert main.main(["config", "show", "tiny", "sft.train.lr=0.002", "run_dir=here"]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert shown["sft"]["train"]["lr"] == 0.002 and shown["run_dir"] == str(tmp_path / "here")
    assert shown == config_load.plain(config_load.load(PipelineConfig, "tiny", ["sft.train.lr=0.002", "run_dir=here"]))
    assert main.main(["config", "cp", "tiny", "my.yaml"]) == 0
    assert (tmp_path / "my.yaml").read_text() == config_load.packaged()["tiny"].read_text()
    assert main.main(["config", "cp", "tiny", "my.yaml"]) == 2  # never overwrites
    assert "my.yaml exists" in capsys.readouterr().err
    assert main.main(["config", "show", "no-such-config"]) == 2
    assert "example config: gsm8k-gpu, rm-hh" in capsys.readouterr().err


def test_the_config_reference_is_generated_from_the_dataclasses():
    assert (REPO / "docs" / "config-reference.md").read_text() == reference.markdown(), \
        "regenerate it: rlhf-ray config reference > docs/config-reference.md"
    assert "| `reward.train.lr` | float | `3e-05` |" in reference.markdown()


def test_a_scalar_where_a_list_is_expected_is_a_list_of_one(tmp_path):
    cfg = config_load.load(PipelineConfig, None, [f"sft.data.train={tmp_path}/a.jsonl", "eval.bon_n=4"])
    assert cfg.sft.data.train == (f"{tmp_path}/a.jsonl",) and cfg.eval.bon_n == (4,)


def test_the_example_configs_are_package_data_in_the_wheel(tmp_path):
    import shutil

    src = tmp_path / "src"  # a copy: building writes build/ and *.egg-info beside the sources
    shutil.copytree(REPO / "rlhf_ray", src / "rlhf_ray", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(tmp_path), str(src)], capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stderr[-2000:]
    (wheel,) = tmp_path.glob("rlhf_ray-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {f"rlhf_ray/configs/{n}.yaml" for n in config_load.packaged()} <= set(names)
