"""Prompt rows before generation: tokens in generation-prompt mode, and the prompts that cannot be sent."""
from rlhf_ray import models
from rlhf_ray.core import chat
from rlhf_ray.engines import generator, vllm_engine

ROW = {"prompt": [{"role": "user", "content": "What is 2 + 2?"}], "_file": "/data/prompts.jsonl", "_line": 7,
       "answer": "4"}


def test_prompt_tokens_are_the_generation_prompt(policy_dir):
    out = generator.tokenize_prompt(ROW, str(policy_dir), None, 100)
    tok = models.load_tokenizer(str(policy_dir))
    assert out["prompt_token_ids"] == chat.render_prompt(ROW["prompt"], tok)
    assert out["prompt_id"] == "prompts.jsonl:7" and out["answer"] == "4" and out["reason"] is None


def test_a_prompt_without_room_for_the_completion_is_tagged(policy_dir):
    out = generator.tokenize_prompt(ROW, str(policy_dir), None, 10)
    assert out["field"] == "prompt" and out["reason"].endswith("leaves room for 10")
    assert (out["file"], out["line"]) == ("/data/prompts.jsonl", 7)


def test_a_prompt_the_template_rejects_is_tagged_with_its_message(policy_dir, tmp_path):
    template = tmp_path / "strict.jinja"
    template.write_text("{% if messages[0]['role'] != 'system' %}{{ raise_exception('a system message comes first') }}"
                        "{% endif %}{% for m in messages %}{{ m['content'] }}{% endfor %}")
    out = generator.tokenize_prompt(ROW, str(policy_dir), str(template), 100)
    assert out["field"] == "prompt" and "a system message comes first" in out["reason"]


def test_prompt_ids_name_as_much_of_the_path_as_tells_same_named_files_apart(policy_dir):
    sources = {"/data/prompts.jsonl": "data/prompts.jsonl", "/extra/prompts.jsonl": "extra/prompts.jsonl"}
    out = generator.tokenize_prompt(ROW, str(policy_dir), None, 100, sources)
    assert out["prompt_id"] == "data/prompts.jsonl:7"


def test_auto_dtype_is_float32_on_a_cpu_without_amx(tmp_path):
    without, with_amx = tmp_path / "without", tmp_path / "with"
    without.write_text("flags\t\t: fpu avx512f avx512_bf16\n")
    with_amx.write_text("flags\t\t: fpu avx512f avx512_bf16 amx_bf16 amx_tile\n")
    assert vllm_engine.cpu_dtype("auto", str(without)) == "float32"
    assert vllm_engine.cpu_dtype("auto", str(with_amx)) == "auto"  # vLLM takes the checkpoint's dtype
    assert vllm_engine.cpu_dtype("bfloat16", str(without)) == "bfloat16"  # an explicit choice is kept
    assert vllm_engine.cpu_dtype("auto", str(tmp_path / "missing")) == "auto"
