"""The selection step of rejection sampling on scored candidates (the RLHF book's worked example)."""
import json

import numpy as np
import pandas as pd

from rlhf_ray.stages import rejection_sampling
from rlhf_ray import config_load, manifest
from rlhf_ray.config import PipelineConfig

R = [[.7, .3, .5, .2], [.4, .8, .6, .5], [.9, .3, .4, .7], [.2, .5, .8, .6], [.5, .4, .3, .6]]


def scored(tmp_path, rewards=R, completions=None, finish=None):
    rows = []
    for i, row in enumerate(rewards):
        for j, r in enumerate(row):
            rows.append({"prompt_id": f"p{i + 1}", "sample_idx": j, "prompt": [{"role": "user", "content": f"q{i + 1}"}],
                         "completion": completions[i][j] if completions else f"answer {i + 1}.{j + 1}",
                         "finish_reason": finish[i][j] if finish else "stop", "answer": f"{i + 1}.{j + 1}",
                         "reward": r})
    path = tmp_path / "scored"
    path.mkdir()
    pd.DataFrame(rows).sample(frac=1, random_state=0).to_parquet(path / "part.parquet")  # arrival order is any
    return path


def kept(path):
    return [(json.loads(l)["prompt_id"], json.loads(l)["messages"][-1]["content"]) for l in path.read_text().splitlines()]


def test_top_per_prompt_keeps_the_books_picks_and_a_matched_random_set(tmp_path):
    cfg = config_load.load(PipelineConfig, None, [])
    paths = rejection_sampling.select(cfg.rs, cfg.eval.gold, scored(tmp_path), tmp_path / "select")
    assert kept(paths["kept"]) == [("p1", "answer 1.1"), ("p2", "answer 2.2"), ("p3", "answer 3.1"),
                                   ("p4", "answer 4.3"), ("p5", "answer 5.4")]
    first = json.loads(paths["kept"].read_text().splitlines()[0])
    assert first["messages"] == [{"role": "user", "content": "q1"}, {"role": "assistant", "content": "answer 1.1"}]
    rand = kept(paths["random"])
    assert sorted(p for p, _ in rand) == ["p1", "p2", "p3", "p4", "p5"]  # same count, one per prompt
    counts = manifest.read(tmp_path / "select")["counts"]
    assert counts["kept"] == counts["random"] == 5 and counts["pairs"] == 5
    assert np.isclose(counts["reward_mean_kept"], np.mean([.7, .8, .9, .8, .6]))
    # The gold checker reads the final number: "answer 1.1" matches its answer "1.1".
    assert counts["gold_mean_kept"] == 1.0


def test_top_k_overall_takes_prompt_3_twice_and_prompt_5_never(tmp_path):
    cfg = config_load.load(PipelineConfig, None, ["rs.strategy=top_k_overall", "rs.top_k=5"])
    paths = rejection_sampling.select(cfg.rs, cfg.eval.gold, scored(tmp_path), tmp_path / "select")
    assert kept(paths["kept"]) == [("p3", "answer 3.1"), ("p2", "answer 2.2"), ("p4", "answer 4.3"),
                                   ("p1", "answer 1.1"), ("p3", "answer 3.4")]
    assert len(kept(paths["random"])) == 5


def test_duplicates_and_truncated_completions_are_not_kept(tmp_path):
    completions = [[f"c{i}{j}" for j in range(4)] for i in range(5)]
    finish = [["stop"] * 4 for _ in range(5)]
    completions[1][2] = completions[1][1] = "same"   # p2's best (.8) duplicates its second best (.6)
    finish[2][0] = "length"                          # p3's best (.9) was cut at max_tokens
    cfg = config_load.load(PipelineConfig, None, ["rs.strategy=top_k_overall", "rs.top_k=20"])
    paths = rejection_sampling.select(cfg.rs, cfg.eval.gold, scored(tmp_path, completions=completions, finish=finish), tmp_path / "select")
    texts = [t for _, t in kept(paths["kept"])]
    assert texts.count("same") == 1 and "c20" not in texts and len(texts) == 18


def test_the_random_baseline_draws_repeated_answers_as_often_as_the_policy_samples_them(tmp_path):
    # Each prompt's samples: the same answer three times, another once. A random pick that skipped
    # repeats would take each half the time; the policy gives the repeated one 3 times in 4.
    rewards = [[.1, .2, .3, .4]] * 200
    completions = [["= 5."] * 3 + ["= 6."]] * 200
    cfg = config_load.load(PipelineConfig, None, [])
    paths = rejection_sampling.select(cfg.rs, cfg.eval.gold, scored(tmp_path, rewards, completions), tmp_path / "select")
    picks = [t for _, t in kept(paths["random"])]
    assert len(picks) == 200 and 0.65 < picks.count("= 5.") / 200 < 0.85
    assert manifest.read(tmp_path / "select")["counts"]["usable"] == 800


def test_a_top_k_above_the_scored_candidates_is_one_line_not_a_short_selection(tmp_path):
    import pytest

    cfg = config_load.load(PipelineConfig, None, ["rs.strategy=top_k_overall", "rs.top_k=21"])
    with pytest.raises(ValueError, match=r"^rs.top_k=21: only 20 scored candidates in .*scored; keep fewer"):
        rejection_sampling.select(cfg.rs, cfg.eval.gold, scored(tmp_path), tmp_path / "select")
