"""Model cards the Hub parses, with the lineage and figures of the stage that trained the model."""
from huggingface_hub import ModelCard

from rlhf_ray import model_card


def test_a_card_parses_and_an_rs_policy_descends_from_the_sft_policys_base(tmp_path):
    sft, rs = tmp_path / "sft" / "model", tmp_path / "rs" / "model"
    sft.mkdir(parents=True)
    rs.mkdir(parents=True)
    model_card.write(sft, "sft", "default", ["/data/train.jsonl"], {"train_rows": 240, "steps": 15},
                     {"loss": 0.51234, "eval_loss": 0.7, "lr": 1e-5, "step": 15}, "abc123")
    card = ModelCard.load(sft / "README.md")
    assert card.data.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct" and card.data.license == "apache-2.0"
    assert card.data.datasets == ["train.jsonl"] and card.data.library_name == "transformers"
    assert '"train_rows": 240' in card.text and '"eval_loss": 0.7' in card.text and "abc123" in card.text
    model_card.write(rs, "sft", str(sft), ["/runs/kept.jsonl"], {"train_rows": 64}, {}, "def456")
    again = ModelCard.load(rs / "README.md")
    assert again.data.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct" and again.data.license == "apache-2.0"
    assert f"fine-tuned from `{sft}`" in again.text


def test_a_reward_models_card_names_its_objective_and_a_hub_base_stays_itself(tmp_path):
    model_card.write(tmp_path, "reward_model", "Qwen/Qwen2.5-0.5B", [], {"train_rows": 8}, {"eval_accuracy": 0.75},
                     "h", objective="bt")
    card = ModelCard.load(tmp_path / "README.md")
    assert card.data.base_model == "Qwen/Qwen2.5-0.5B" and card.data.license is None
    assert "bt" in card.data.tags and "reward model (bt)" in card.text and '"eval_accuracy": 0.75' in card.text
