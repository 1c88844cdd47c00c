"""Every reward objective trains end to end on a tiny model; heads read the right token."""
import pytest
import torch

from rlhf_ray import models
from rlhf_ray.core import objectives as rm
from rlhf_ray.train import loop
from rlhf_ray.train import reward
from reward_rows import A, P, rows_for  # tests/


@pytest.fixture(scope="module")
def tiny_dir(tiny_policy_dir):
    return tiny_policy_dir


@pytest.mark.parametrize("objective", ["bt", "margin", "kwise", "plackett_luce", "orm", "prm"])
def test_each_objective_lowers_its_loss(objective, tiny_dir):
    tok = models.load_tokenizer(str(tiny_dir))
    torch.manual_seed(0)
    model = models.load_reward_model(str(tiny_dir), objective, tok)
    encoded = [rm.encode_row(r, objective, tok, None, 128) for r in rows_for(objective)]
    batch = rm.collate(encoded, objective, tok.pad_token_id)
    mb = [{"batch": batch, "units": rm.OBJECTIVES[objective].units(batch), "tokens": 0, "padding": 0}]
    opt = loop.build_optimizer(model, 3e-3, 0.0)
    sched = loop.build_scheduler(opt, 40, 0.0, "constant")
    first = loop.train_step(model, opt, sched, mb, reward.loss_fn(objective), 1.0, "cpu").loss
    for _ in range(40):
        last = loop.train_step(model, opt, sched, mb, reward.loss_fn(objective), 1.0, "cpu").loss
    assert last < 0.5 * first, (first, last)
    metrics = reward.evaluate(model, mb, objective, "cpu")
    key = {"orm": "eval_auc", "prm": "eval_step_accuracy"}.get(objective, "eval_accuracy")
    assert metrics[key] == 1.0


def test_reward_is_read_at_the_last_real_token_whatever_the_padding_side(tiny_dir):
    tok = models.load_tokenizer(str(tiny_dir))
    model = models.load_reward_model(str(tiny_dir), "bt", tok).eval()
    ids, _, _, _ = rm.encode(P, A("Fine."), tok, None, 128)
    alone = model(torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.long))
    pad = [tok.pad_token_id] * 5
    right = torch.tensor([ids + pad]), torch.tensor([[1] * len(ids) + [0] * 5])
    left = torch.tensor([pad + ids]), torch.tensor([[0] * 5 + [1] * len(ids)])
    for input_ids, mask in (right, left):
        assert torch.allclose(model(input_ids, mask), alone, atol=1e-5)
    # transformers' own head agrees on unpadded input (what vLLM's pooling runner sees too)
    assert torch.allclose(model.backbone(input_ids=torch.tensor([ids])).logits[:, 0], alone, atol=1e-5)


def test_encoder_backbone_without_chat_template_scores_cls():
    from rlhf_ray.models import default_rm_dir
    tok = models.load_tokenizer(str(default_rm_dir()))
    model = models.load_reward_model(str(default_rm_dir()), "bt", tok).eval()
    ids, in_completion, _, _ = rm.encode(P, A("Fine."), tok, None, 512)
    assert tok.convert_ids_to_tokens(ids)[0] == "[CLS]" and tok.decode(
        [i for i, c in zip(ids, in_completion) if c]) == "fine."
    r = model(torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.long))
    assert r.shape == (1,)


def test_left_truncation_keeps_the_completion(tiny_dir):
    tok = models.load_tokenizer(str(tiny_dir))
    long_prompt = [{"role": "user", "content": "word " * 300}]
    ids, in_completion, _, _ = rm.encode(long_prompt, A("The answer."), tok, None, 64)
    assert len(ids) == 64 and tok.decode([i for i, c in zip(ids, in_completion) if c]).startswith("The answer.")


def test_prm_labels_sit_on_each_steps_last_token(tiny_dir):
    tok = models.load_tokenizer(str(tiny_dir))
    ids, targets = rm.step_labels(P, ["One plus one is two.", "So x is 3."], [1, -1], tok, None, 512)
    marked = [(tok.decode(ids[: i + 1]).splitlines()[-1], t) for i, t in enumerate(targets) if t != -100]
    assert marked == [("One plus one is two.", 2), ("So x is 3.", 0)]


def test_encoder_mean_pooling_is_saved_and_ignores_padding(tmp_path):
    from rlhf_ray.models import default_rm_dir
    tok = models.load_tokenizer(str(default_rm_dir()))
    model = models.load_reward_model(str(default_rm_dir()), "bt", tok).eval()
    assert model.config.rlhf_ray_pooling == "mean"
    ids, _, _, _ = rm.encode(P, A("Fine."), tok, None, 128)
    alone = model(torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.long))
    padded = model(torch.tensor([ids + [0] * 4]), torch.tensor([[1] * len(ids) + [0] * 4]))
    assert torch.allclose(alone, padded, atol=1e-5)
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    again = models.load_reward_model(str(tmp_path), "bt", tok).eval()
    assert again.config.rlhf_ray_pooling == "mean"
    assert torch.allclose(again(torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.long)),
                          alone, atol=1e-5)


@pytest.mark.parametrize("template", ["qwen3", "trim"])
def test_prm_labels_follow_the_rendered_text_when_the_template_adds_or_trims(tiny_dir, template, tmp_path):
    # Qwen3 writes "<think>\n\n</think>\n\n" before the answer; a `| trim` template drops its edges: the
    # completion is not where the prompt's rendering ends.
    import os

    import trl

    path = os.path.join(os.path.dirname(trl.__file__), "chat_templates", "qwen3.jinja")
    if template == "trim":
        path = tmp_path / "trim.jinja"
        path.write_text("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] | trim }}<|im_end|>\n"
                        "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    tok = models.load_tokenizer(str(tiny_dir))
    steps = ["  One plus one is two.", "So x is 3.", "The answer is 3.  "]
    ids, targets = rm.step_labels(P, steps, [1, 0, -1], tok, str(path), 512)
    marked = [(tok.decode(ids[: i + 1]).splitlines()[-1].strip(), t) for i, t in enumerate(targets) if t != -100]
    assert marked == [("One plus one is two.", 2), ("So x is 3.", 1), ("The answer is 3.", 0)]


def test_a_trained_prm_checkpoint_is_scored_by_its_steps_probability_of_being_correct(tiny_dir, tmp_path):
    from rlhf_ray.core import losses
    from rlhf_ray.engines.scorers import RewardScorer

    tok = models.load_tokenizer(str(tiny_dir))
    torch.manual_seed(0)
    model = models.load_reward_model(str(tiny_dir), "prm", tok)
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    steps = ["Step one is fine.", "Step two is wrong."]
    answer = [{"role": "assistant", "content": "\n".join(steps)}]
    low, mean = (RewardScorer(str(tmp_path), prm_reduce=r).score([P], [answer])[0] for r in ("min", "mean"))
    ids, targets = rm.step_labels(P, steps, [1, 1], tok, None, 512)
    with torch.no_grad():
        p = model(torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.long))[0].softmax(-1)[:, losses.PRM_CLASSES[1]]
    at = [i for i, t in enumerate(targets) if t != -100]
    assert len(at) == 2 and low == pytest.approx(float(p[at].min()), abs=1e-5)
    assert mean == pytest.approx(float(p[at].mean()), abs=1e-5) and 0 <= low <= mean <= 1


def test_the_scorer_runs_where_its_actor_holds_a_gpu_in_the_configured_dtype(tiny_dir, tmp_path, monkeypatch):
    from rlhf_ray.engines import scorers

    tok = models.load_tokenizer(str(tiny_dir))
    models.load_reward_model(str(tiny_dir), "bt", tok).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # an actor given a GPU (numbers: tests/gpu)
    assert scorers.actor_device() == "cuda"
    monkeypatch.undo()
    assert scorers.actor_device() == "cpu"
    full, half = (scorers.RewardScorer(str(tmp_path), dtype=d) for d in ("float32", "bfloat16"))
    assert full.device.type == "cpu" and next(half.model.parameters()).dtype == torch.bfloat16
    answers = [A("Fine."), A("Not at all, go away.")]
    a, b = full.score([P, P], answers), half.score([P, P], answers)
    assert a == pytest.approx(b, abs=0.05 * max(map(abs, a)))


def test_an_out_of_memory_batch_is_split_and_scored_the_same(tiny_dir, tmp_path, monkeypatch):
    from rlhf_ray.engines import scorers

    tok = models.load_tokenizer(str(tiny_dir))
    models.load_reward_model(str(tiny_dir), "bt", tok).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    scorer = scorers.RewardScorer(str(tmp_path), batch_size=4)
    answers = [A(f"Answer number {i}.") for i in range(4)]
    expected = scorer.score([P] * 4, answers)
    forward, sizes = scorer._forward, []

    def small_memory(items):  # a device that fits two sequences at a time
        sizes.append(len(items))
        if len(items) > 2:
            raise torch.OutOfMemoryError("CUDA out of memory")
        return forward(items)

    monkeypatch.setattr(scorer, "_forward", small_memory)
    real = scorer.real
    assert scorer.score([P] * 4, answers) == pytest.approx(expected, abs=1e-5)
    assert sizes == [4, 2, 2]
    assert scorer.real - real == sum(len(scorer.encode(P, a)[0]) for a in answers)  # the failed try not counted


@pytest.mark.parametrize("objective,scored_as", [("bt", "bt"), ("kwise", "bt"), ("orm", "orm"), ("prm", "prm")])
def test_a_saved_head_is_scored_as_its_objectives_table_entry_says(objective, scored_as, tiny_dir, tmp_path):
    from transformers import AutoConfig

    from rlhf_ray.engines.scorers import RewardScorer

    tok = models.load_tokenizer(str(tiny_dir))
    torch.manual_seed(0)
    model = models.load_reward_model(str(tiny_dir), objective, tok).eval()
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    assert rm.for_checkpoint(AutoConfig.from_pretrained(tmp_path)) == scored_as
    answer = A("Step one is fine.\nStep two is wrong.")
    got = RewardScorer(str(tmp_path)).score([P], [answer])[0]
    ids, at = rm.OBJECTIVES[scored_as].score_at(P, answer, tok, None, 512)
    with torch.no_grad():
        out = model(torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.long))[0]
    expected = {"bt": lambda: float(out),  # the sequence's reward
                "orm": lambda: float(out[at[-1], 0]),  # the logit at the last completion token
                "prm": lambda: float(out[at].softmax(-1)[:, 2].min())}[scored_as]()  # min P(step correct)
    assert got == pytest.approx(expected, abs=1e-5) and (len(at) == 2) == (scored_as == "prm")
