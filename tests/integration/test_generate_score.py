"""Generation (real vLLM on CPU) → scoring on the shared local cluster: M×N accounting, the
generation-prompt format, quarantine of prompts that do not fit, actors killed mid-run and engines that
fail."""
import dataclasses
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import pytest

from rlhf_ray.stages import generation, scoring
from rlhf_ray import config, config_load, manifest, models, tasks
from rlhf_ray.core import chat
from rlhf_ray.config import PipelineConfig
from rlhf_ray.engines.generator import VLLMGenerator

pytestmark = [pytest.mark.ray, pytest.mark.timeout(600)]


def write_prompts(path: Path, m: int, extra: list[str] = ()) -> Path:
    task = config.TaskConfig(name="arithmetic", sft_rows=0, prompt_rows=m, eval_rows=0, seed=1)
    lines = Path(tasks.task_files(task, path.parent / "task")["prompts"]).read_text().splitlines() + list(extra)
    path.write_text("\n".join(lines) + "\n")
    return path


def pipeline_cfg(tmp_path, prompts, model, rm, *overrides):
    return config_load.load(PipelineConfig, None, [
        f"run_dir={tmp_path}", f"generate.prompts=[{prompts}]", f"generate.model_dir={model}",
        f"score.model_dir={rm}", *overrides])


def read(path) -> pd.DataFrame:
    return pd.read_parquet(path).sort_values(["prompt_id", "sample_idx"]).reset_index(drop=True)


def test_tiny_model_generate_then_score(ray_cluster, tmp_path, tiny_vllm_policy_dir, tiny_vllm_rm_dir, capsys):
    long_prompt = json.dumps({"prompt": [{"role": "user", "content": "word " * 400}], "answer": "0"})
    prompts = write_prompts(tmp_path / "prompts.jsonl", 12, [long_prompt, json.dumps({"answer": "1"})])
    # Two files of one name (as shards in train/ and extra/ would be): their prompts must not share ids.
    lines = prompts.read_text().splitlines(keepends=True)
    for folder, part in (("train", lines[:6]), ("extra", lines[6:])):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "prompts.jsonl").write_text("".join(part))
    files = f"{tmp_path}/train/prompts.jsonl,{tmp_path}/extra/prompts.jsonl"
    cfg = pipeline_cfg(tmp_path, files, tiny_vllm_policy_dir, tiny_vllm_rm_dir, "generate.n=3", "generate.max_tokens=16",
                       "generate.max_model_len=256", "generate.rows_per_call=4", "score.rows_per_call=8")
    candidates = generation.run(cfg)

    df = read(candidates)
    assert len(df) == 12 * 3 and not df.duplicated(["prompt_id", "sample_idx"]).any()
    assert sorted(df.groupby("prompt_id").sample_idx.apply(list).map(tuple).unique()) == [(0, 1, 2)]
    assert sorted(set(df.prompt_id))[:2] == ["extra/prompts.jsonl:1", "extra/prompts.jsonl:2"]
    assert "train/prompts.jsonl:6" in set(df.prompt_id) and df.prompt_id.nunique() == 12
    tok = models.load_tokenizer(str(tiny_vllm_policy_dir))
    for _, row in df.iloc[::3].iterrows():
        ids = chat.render_prompt(list(row.prompt), tok)
        assert row.num_prompt_tokens == len(ids)
        assert tok.decode(ids).endswith("<|im_start|>assistant\n")  # generation-prompt mode, as SFT trained
    assert set(df.finish_reason) <= {"stop", "length"} and (df.num_completion_tokens <= 16).all()
    gold = {json.loads(l)["prompt"][0]["content"]: json.loads(l)["answer"] for l in prompts.read_text().splitlines()[:12]}
    assert all(gold[p[0]["content"]] == a for p, a in zip(df.prompt, df.answer))
    quarantined = [json.loads(l) for l in (tmp_path / "generate" / "quarantine.jsonl").read_text().splitlines()]
    assert sorted((Path(q["file"]).parent.name, q["line"], q["field"]) for q in quarantined) == [
        ("extra", 7, "prompt"), ("extra", 8, "prompt")]
    assert "tokens" in next(q["reason"] for q in quarantined if q["line"] == 7)
    counts = manifest.read(tmp_path / "generate")["counts"]
    assert counts["prompts"] == 12 and counts["candidates"] == 36 and counts["quarantined"] == 2
    # The actors counted their prompts into the stage's progress line.
    assert f"[generate {tmp_path}] 12/12 prompts (100%)" in capsys.readouterr().out

    scored = read(scoring.run(cfg))
    assert f"[score {tmp_path}] 36/36 candidates (100%)" in capsys.readouterr().out
    assert len(scored) == 36 and np.isfinite(scored.reward).all() and scored.reward.std() > 0
    from rlhf_ray.engines.scorers import RewardScorer

    direct = RewardScorer(str(tiny_vllm_rm_dir)).score([list(p) for p in scored.prompt[:6]],
                                                  [[{"role": "assistant", "content": c}] for c in scored.completion[:6]])
    np.testing.assert_allclose(scored.reward[:6], direct, atol=1e-5)
    assert 0 <= manifest.read(tmp_path / "score")["counts"]["padding_fraction"] < 0.5


def test_vllm_pooling_scorer_matches_transformers_in_the_configured_dtype(ray_cluster, tiny_vllm_rm_dir):
    import ray

    @ray.remote(num_cpus=1, max_calls=1)  # a process per engine: vLLM's parallel state is per process
    def both(model_dir, dtype):
        from rlhf_ray.engines.scorers import RewardScorer, VLLMRewardScorer

        prompts = [[{"role": "user", "content": f"What is {i} + {i}?"}] for i in range(6)]
        completions = [[{"role": "assistant", "content": f"It is {2 * i + (i % 2)}."}] for i in range(5)]
        completions.append([{"role": "assistant", "content": "It is <file_sep>."}])  # unscored by both: NaN
        hf, engine = RewardScorer(model_dir, dtype=dtype), VLLMRewardScorer(model_dir, dtype=dtype)
        return (hf.score(prompts, completions), engine.score(prompts, completions),
                str(next(hf.model.parameters()).dtype), str(engine.llm.llm_engine.model_config.dtype))

    hf, vllm_scores, hf_dtype, vllm_dtype = ray.get(both.remote(str(tiny_vllm_rm_dir), "float32"))
    assert np.isnan(hf[5]) and np.isnan(vllm_scores[5])
    np.testing.assert_allclose(vllm_scores, hf, atol=1e-4)  # NaN where both are NaN
    assert np.nanstd(hf) > 0 and hf_dtype == vllm_dtype == "torch.float32"
    # The configured dtype reaches both scorers' models (vLLM's was dropped before).
    hf16, vllm16, hf_dtype, vllm_dtype = ray.get(both.remote(str(tiny_vllm_rm_dir), "bfloat16"))
    assert hf_dtype == vllm_dtype == "torch.bfloat16"
    np.testing.assert_allclose(vllm16, hf, atol=0.05 * np.nanmax(np.abs(hf)))
    np.testing.assert_allclose(hf16, hf, atol=0.05 * np.nanmax(np.abs(hf)))


def _kill_when_output_appears(folder: Path, actor: str, record: dict, timeout: float = 300):
    """SIGKILL the first process of ``actor`` once the stage has written its first output file."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        files = list(folder.glob("*.parquet")) if folder.exists() else []
        if files:
            for p in psutil.process_iter(["pid", "cmdline"]):
                if actor in " ".join(p.info["cmdline"] or []):
                    os.kill(p.info["pid"], signal.SIGKILL)
                    record.update(pid=p.info["pid"], files_at_kill=len(files))
                    return
        time.sleep(0.05)


def _run_with_kill(fn, cfg, folder: Path, actor: str) -> dict:
    record: dict = {}
    killer = threading.Thread(target=_kill_when_output_appears, args=(folder, actor, record), daemon=True)
    killer.start()
    start = time.time()
    fn(cfg)
    killer.join(timeout=1)
    print(f"{actor}: {time.time() - start:.1f} s, killed {record}")
    return record


@pytest.mark.slow  # the real SmolLM2; engine replacement without it: test_an_engine_that_fails_is_replaced...
def test_smollm2_generate_score_survive_killed_actors(ray_cluster, tmp_path, policy_dir):
    """SmolLM2 generates and (with an untrained head) scores; one actor of each stage is killed mid-run."""
    m, n = 16, 4
    prompts = write_prompts(tmp_path / "prompts.jsonl", m)
    cfg = pipeline_cfg(tmp_path, prompts, "default", "default", f"generate.n={n}", "generate.max_tokens=64",
                       "generate.max_model_len=512", "generate.rows_per_call=2", "score.rows_per_call=4",
                       "score.batch_size=4", "score.threads=1")
    killed = _run_with_kill(generation.run, cfg, tmp_path / "generate" / "candidates", "VLLMGenerator")
    assert killed and killed["files_at_kill"] < m // 2, f"the generation actor was not killed mid-run: {killed}"
    assert not psutil.pid_exists(killed["pid"])
    df = read(tmp_path / "generate" / "candidates")
    assert len(df) == m * n and not df.duplicated(["prompt_id", "sample_idx"]).any()
    # The instruct model ends its turn with <|im_end|> (vLLM reports "stop") and never writes a new turn.
    assert (df.finish_reason == "stop").mean() >= 0.25
    assert not df.completion.str.contains("<|im_start|>", regex=False).any()
    assert df.groupby("prompt_id").completion.nunique().min() >= 2  # sampling, not n copies of one answer

    killed = _run_with_kill(scoring.run, cfg, tmp_path / "score" / "scored", "_ScoreActor")
    assert killed and killed["files_at_kill"] < m * n // 4, f"the scoring actor was not killed mid-run: {killed}"
    scored = read(tmp_path / "score" / "scored")
    assert len(scored) == m * n and not scored.duplicated(["prompt_id", "sample_idx"]).any()
    assert np.isfinite(scored.reward).all()


def test_function_scorer_on_a_parquet_of_candidates(ray_cluster, tmp_path):
    rows = [{"prompt_id": f"p{i}", "sample_idx": j, "prompt": [{"role": "user", "content": f"What is {i} + 1?"}],
             "completion": f"{i} + 1 = {i + 1 if j == 0 else i + 2}. The answer is {i + 1 if j == 0 else i + 2}.",
             "answer": str(i + 1), "finish_reason": "stop"} for i in range(20) for j in range(2)]
    (tmp_path / "candidates").mkdir()
    pd.DataFrame(rows).to_parquet(tmp_path / "candidates" / "part.parquet")
    rule = config.ScoreConfig(scorer="function", function="rlhf_ray.core.rewards:final_number", rows_per_call=8)
    scored = read(scoring.score(rule, str(tmp_path / "candidates"), "", tmp_path / "score"))
    assert len(scored) == 40 and (scored.reward == (scored.sample_idx == 0)).all()
    assert manifest.read(tmp_path / "score")["counts"]["candidates"] == 40

    # A row the function cannot judge fails the stage with the row named, not a deep traceback only.
    (tmp_path / "bad").mkdir()
    pd.DataFrame([{**rows[0], "answer": None}]).to_parquet(tmp_path / "bad" / "part.parquet")
    with pytest.raises(Exception, match=r"reward function rlhf_ray.core.rewards:final_number failed on prompt_id 'p0'"):
        scoring.score(rule, str(tmp_path / "bad"), "", tmp_path / "score_bad")


class _FaultyEngine(VLLMGenerator):
    """The real generator whose engine fails at its first step in a stage's first actor (not in its
    replacements). Injected through the module the stage builds its actors from."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        first = Path(kwargs["failures"]).parent / "fault_injected"
        if not first.exists():
            first.touch()

            def failing_step():
                raise RuntimeError("injected engine fault")

            self.engine.llm.llm_engine.step = failing_step


def test_an_engine_that_fails_is_replaced_and_no_row_is_lost(ray_cluster, tmp_path, tiny_vllm_policy_dir, monkeypatch):
    from ray import cloudpickle

    from rlhf_ray.engines import actor_pool, generator

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the actors unpickle the class above
    m, n = 12, 3
    prompts = write_prompts(tmp_path / "prompts.jsonl", m)
    monkeypatch.setattr(generator, "VLLMGenerator", _FaultyEngine)
    cfg = pipeline_cfg(tmp_path / "once", prompts, tiny_vllm_policy_dir, "", f"generate.n={n}", "generate.max_tokens=8",
                       "generate.max_model_len=256", "generate.rows_per_call=4", "generate.engine_restarts=1")
    df = read(generation.run(cfg))
    assert len(df) == m * n and not df.duplicated(["prompt_id", "sample_idx"]).any()
    assert manifest.read(tmp_path / "once" / "generate")["counts"]["engines_replaced"] == 1

    # Past generate.engine_restarts (here none), one message naming the engine's error.
    cfg = dataclasses.replace(cfg, run_dir=str(tmp_path / "always"),
                              generate=dataclasses.replace(cfg.generate, engine_restarts=0))
    with pytest.raises(actor_pool.EngineFailed, match=r"\(1 failures; generate.engine_restarts=0 .*: RuntimeError: injected engine fault$"):
        generation.run(cfg)
