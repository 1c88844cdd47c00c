"""Report pieces: the results table and the plots (files that matplotlib really writes)."""
import json

from rlhf_ray import report

RESULTS = {"policies": {"sft": {"gold": 0.5, "proxy": 0.1}, "rs": {"gold": 0.625, "proxy": 0.3},
                        "random": {"gold": 0.5, "proxy": 0.2}},
           "best_of_n": {"1": {"proxy": 0.1, "gold": 0.5, "gold_oracle": 0.5},
                         "4": {"proxy": 0.9, "gold": 0.75, "gold_oracle": 0.875}}}


def test_results_table_orders_sft_bon_rs_and_baseline():
    assert report.results_table(RESULTS) == [
        ("SFT policy", "0.500", "0.100"), ("SFT, best-of-1", "0.500", "0.100"), ("SFT, best-of-4", "0.750", "0.900"),
        ("after rejection sampling", "0.625", "0.300"), ("matched random baseline", "0.500", "0.200")]
    assert report.results_table({"policies": {"sft": {"gold": None, "proxy": 1.0}}}) == [("SFT policy", "—", "1.000")]


def test_report_from_a_partial_run_folder_says_what_is_missing(tmp_path):
    (tmp_path / "sft").mkdir()
    (tmp_path / "sft" / "metrics.jsonl").write_text("\n".join(json.dumps(m) for m in [
        {"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.5, "eval_loss": 1.7}]))
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "results.json").write_text(json.dumps(RESULTS))
    page = report.build(tmp_path).read_text()
    assert '<img src="sft_loss.png"' in page and '<img src="bon.png"' in page
    assert (tmp_path / "sft_loss.png").read_bytes()[:4] == b"\x89PNG"
    assert "no reward-model metrics" in page and "no rejection-sampling round" in page
    assert "<td>after rejection sampling</td><td>0.625</td>" in page
