"""Report pieces: the results table and the plots (files that matplotlib really writes)."""
import json

from rlhf_ray import report

CI = {"estimate": 0.125, "lo": 0.05, "hi": 0.2, "level": 0.95, "prompts": 8}
RESULTS = {"policies": {"sft": {"gold": 0.5, "greedy_gold": 0.625, "proxy": 0.1}, "rs": {"gold": 0.625, "proxy": 0.3},
                        "random": {"gold": 0.5, "proxy": 0.2}},
           "best_of_n": {"1": {"proxy": 0.1, "gold": 0.5, "gold_random": 0.5, "gold_oracle": 0.5},
                         "4": {"proxy": 0.9, "gold": 0.75, "gold_random": 0.5, "gold_oracle": 0.875, "gain_over_1": CI,
                               "gap_closed": {"estimate": None, "lo": None, "hi": None}}},
           "comparisons": {"rs - sft": {"gold": CI}},
           "verdict": "The RS policy beat the SFT policy: +0.125."}


def test_tables():
    assert report.results_table(RESULTS) == [
        ("SFT policy", "0.500", "0.625", "0.100"), ("after rejection sampling (RM picks)", "0.625", "—", "0.300"),
        ("matched random baseline", "0.500", "—", "0.200")]
    assert report.bon_table(RESULTS)[1] == ("4", "0.900", "0.750", "0.500", "0.875", "+0.125 [+0.050, +0.200]", "—")
    assert report.comparison_table(RESULTS) == [("rs - sft", "+0.125 [+0.050, +0.200]", "—")]


def test_report_from_a_partial_run_folder_says_what_is_missing(tmp_path):
    (tmp_path / "sft").mkdir()
    (tmp_path / "sft" / "metrics.jsonl").write_text("\n".join(json.dumps(m) for m in [
        {"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.5, "eval_loss": 1.7}]))
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "results.json").write_text(json.dumps(RESULTS))
    page = report.build(tmp_path).read_text()
    import base64
    import re

    # One self-contained file: each plot is inside the page, as the PNG written beside it.
    images = dict((name, data) for data, name in re.findall(r'<img src="data:image/png;base64,([^"]+)" alt="[^"]*" '
                                                            r'title="([^"]+)">', page))
    assert set(images) == {"sft_loss.png", "bon.png"}
    assert base64.b64decode(images["sft_loss.png"]) == (tmp_path / "sft_loss.png").read_bytes()
    assert (tmp_path / "sft_loss.png").read_bytes()[:4] == b"\x89PNG"
    assert "no reward-model metrics" in page and "no rejection-sampling round" in page
    assert "<td>after rejection sampling (RM picks)</td><td>0.625</td>" in page
    assert page.index("The RS policy beat the SFT policy") < page.index("sft_loss.png")  # the verdict comes first


def test_the_reward_model_and_the_selections_read_as_words_and_tables():
    counts = {"prompts": 192, "samples": 1536, "correct_fraction": 0.2949, "prompts_with_both": 116, "train_rows": 388,
              "eval_rows": 76}
    assert report.rm_data_line(counts) == ("Trained on the SFT policy's own answers, labelled by the checker: 1536 answers "
                                           "to 192 problems, 29% of them right; 388 right-vs-wrong pairs from the 116 "
                                           "problems with both, 76 more held out.")
    assert report.held_out_line({"eval_loss": 0.2316, "eval_accuracy": 0.8553, "eval_chosen_mean": 2.88}) == \
        "Held-out: loss 0.232, accuracy 0.855, chosen mean 2.880."
    rs = {"candidates": 1024, "kept": 128, "gold_mean_kept": 0.508, "gold_mean_random": 0.297, "gold_mean_all": 0.326,
          "reward_mean_kept": 2.553, "reward_mean_random": 1.073, "reward_mean_all": 1.118}
    assert report.selection_table({"rs": rs, "rs_rule": {"candidates": 1024, "kept": 77}}) == [
        ("reward model", "1024", "128", "0.508", "0.297", "0.326", "2.553", "1.073", "1.118"),
        ("rule reward", "1024", "77", "—", "—", "—", "—", "—", "—")]
