"""Rendering and masking on built-in templates and the real SmolLM2 tokenizer."""
import pytest
from transformers import AutoTokenizer

from rlhf_ray.core import chat
from rlhf_ray.core.chat import IGNORE_INDEX

PIRATE = [
    {"role": "system", "content": "You are a friendly chatbot who always responds in the style of a pirate"},
    {"role": "user", "content": "How many helicopters can a human eat in one sitting?"},
]
CONV = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Capital of France?"},
    {"role": "assistant", "content": "Paris."},
    {"role": "user", "content": "And of Italy?"},
    {"role": "assistant", "content": "Rome."},
]


def trained_text(rendered, tok):
    runs, cur = [], []
    for t, label in zip(rendered.input_ids, rendered.labels):
        if label != IGNORE_INDEX:
            cur.append(t)
        elif cur:
            runs.append(tok.decode(cur, skip_special_tokens=False))
            cur = []
    if cur:
        runs.append(tok.decode(cur, skip_special_tokens=False))
    return runs


def test_pirate_example_in_chatml_character_for_character(smol_tokenizer):
    text = chat.render_text(PIRATE, smol_tokenizer, "chatml", add_generation_prompt=True)
    assert text == (
        "<|im_start|>system\n"
        "You are a friendly chatbot who always responds in the style of a pirate<|im_end|>\n"
        "<|im_start|>user\n"
        "How many helicopters can a human eat in one sitting?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_builtin_zephyr_and_tulu_strings(smol_tokenizer):
    conv = CONV[1:3]
    assert chat.render_text(conv, smol_tokenizer, "zephyr") == \
        "<|user|>\nCapital of France?</s>\n<|assistant|>\nParis.</s>\n"
    assert chat.render_text(conv, smol_tokenizer, "tulu") == \
        "<|user|>\nCapital of France?\n<|assistant|>\nParis.<|endoftext|>"
    assert chat.render_text(conv[:1], smol_tokenizer, "tulu", add_generation_prompt=True) == \
        "<|user|>\nCapital of France?\n<|assistant|>\n"


@pytest.mark.parametrize("template", ["chatml", "zephyr", "tulu", None])
def test_all_assistant_trains_each_answer_plus_end_token(smol_tokenizer, template):
    chat.add_template_tokens(smol_tokenizer, template)
    r = chat.render(CONV, smol_tokenizer, "all_assistant", template)
    end = {"chatml": "<|im_end|>", "zephyr": "</s>", "tulu": "<|endoftext|>", None: "<|im_end|>"}[template]
    assert trained_text(r, smol_tokenizer) == [f"Paris.{end}", f"Rome.{end}"]
    assert len(r.input_ids) == len(r.labels)


def test_final_turn_trains_only_the_last_answer(smol_tokenizer):
    full = chat.render(CONV, smol_tokenizer, "all_assistant")
    final = chat.render(CONV, smol_tokenizer, "final_turn")
    assert final.input_ids == full.input_ids
    assert trained_text(final, smol_tokenizer) == ["Rome.<|im_end|>"]


def test_user_system_and_header_tokens_are_never_trained(smol_tokenizer):
    r = chat.render(CONV, smol_tokenizer, "all_assistant")
    trained = {smol_tokenizer.convert_ids_to_tokens(t) for t in r.labels if t != IGNORE_INDEX}
    assert "<|im_start|>" not in trained and "assistant" not in trained
    assert not any("France" in trained_text(r, smol_tokenizer)[i] for i in range(2))


def test_generation_prompt_is_exactly_what_training_continues(smol_tokenizer):
    r = chat.render(CONV, smol_tokenizer, "all_assistant")
    for cut in (2, 4):  # messages before each assistant turn
        prompt = chat.render_prompt(CONV[:cut], smol_tokenizer)
        assert r.input_ids[: len(prompt)] == prompt
        assert r.labels[len(prompt) - 1] == IGNORE_INDEX and r.labels[len(prompt)] != IGNORE_INDEX


def test_prompt_tokens_do_not_merge_across_the_answer_boundary(smol_tokenizer):
    # "\n\n" then text tokenizes differently alone and in context; the cut keeps the prompt's tokens.
    smol_tokenizer.chat_template = (
        "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n\\n' + m['content'] + '<|im_end|>' }}"
        "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n\\n' }}{% endif %}")
    conv = CONV[1:3]
    prompt = chat.render_prompt(conv[:1], smol_tokenizer)
    r = chat.render(conv, smol_tokenizer)
    assert r.input_ids[: len(prompt)] == prompt
    assert trained_text(r, smol_tokenizer) == ["Paris.<|im_end|>"]


def test_no_double_bos_for_a_tokenizer_that_adds_bos(policy_dir):
    tok = AutoTokenizer.from_pretrained(policy_dir, add_bos_token=True)
    bos = tok.bos_token_id
    own = chat.render(CONV, tok)           # SmolLM2's template writes <|im_start|> (= its BOS) itself
    assert own.input_ids[:2] != [bos, bos]
    chat.add_template_tokens(tok, "zephyr")
    zephyr = chat.render(CONV, tok, template="zephyr")  # writes no BOS: exactly one is prepended
    assert zephyr.input_ids[0] == bos and zephyr.input_ids[1] != bos


def test_end_of_turn_ids(smol_tokenizer):
    assert smol_tokenizer.convert_ids_to_tokens(chat.end_of_turn_ids(smol_tokenizer)) == ["<|im_end|>"]


def test_truncation_counts_and_drops_examples_left_without_trained_tokens(smol_tokenizer):
    r = chat.render(CONV, smol_tokenizer, "final_turn")
    stats = chat.TruncationStats()
    start = r.labels.index(next(t for t in r.labels if t != IGNORE_INDEX))
    assert chat.truncate(r, start, stats) is None
    kept = chat.truncate(r, start + 1, stats)
    assert kept is not None and kept.num_trained == 1
    assert (stats.truncated, stats.dropped_no_trained_tokens) == (2, 1)
    assert chat.truncate(r, 10_000, stats) == r and stats.truncated == 2


def test_doctor_flags_truncation_to_zero_trained_tokens(smol_tokenizer):
    report = chat.doctor([CONV, CONV[1:3]], smol_tokenizer, max_seq_len=20)
    assert report.truncation.dropped_no_trained_tokens == 2
    assert not report.ok and "zero trained tokens: 2" in report.summary()


def test_doctor_flags_a_template_that_is_not_prefix_preserving(smol_tokenizer):
    # Writes the end token only after the last message: turns 1..k are not a prefix of 1..k+1.
    smol_tokenizer.chat_template = (
        "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] }}"
        "{% if loop.last %}{{ '<|im_end|>' }}{% else %}{{ '\\n' }}{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
    report = chat.doctor([CONV], smol_tokenizer)
    assert not report.prefix_preserving
    assert "turns 1..1 are not a prefix of turns 1..2" in report.summary()


def test_doctor_passes_a_good_template(smol_tokenizer):
    report = chat.doctor([CONV, CONV[1:3]], smol_tokenizer, max_seq_len=4096)
    assert report.ok and report.prefix_preserving, report.summary()
    assert report.end_tokens == ["<|im_end|>"]


def test_unknown_template_and_missing_template_errors(smol_tokenizer):
    with pytest.raises(chat.TemplateError, match="unknown chat template 'llama9'"):
        chat.render(CONV, smol_tokenizer, template="llama9")
    smol_tokenizer.chat_template = None
    with pytest.raises(chat.TemplateError, match="has no chat template"):
        chat.render(CONV, smol_tokenizer)


def test_show_mask_marks_trained_tokens(smol_tokenizer):
    r = chat.render(CONV[1:3], smol_tokenizer)
    plain = chat.show_mask(r, smol_tokenizer, color=False)
    assert "user\nCapital of France?" in plain and "[Paris][.][<|im_end|>]" in plain
    colored = chat.show_mask(r, smol_tokenizer, color=True)
    assert "\033[42;30mParis\033[0m" in colored


def test_render_refuses_a_multi_turn_row_whose_earlier_turns_the_template_rewrites(smol_tokenizer):
    """TRL's plain qwen3 writes an empty think block into the final turn only: prefix counts would give the
    earlier turns no span. render raises on that row (any row, not only the preflight's), and final_turn
    or the marked training template masks it right."""
    import os

    import trl

    folder = os.path.join(os.path.dirname(trl.__file__), "chat_templates")
    qwen3, qwen3_training = (os.path.join(folder, f) for f in ("qwen3.jinja", "qwen3_training.jinja"))
    dialog = [{"role": "user", "content": "2 + 2?"}, {"role": "assistant", "content": "4."},
              {"role": "user", "content": "3 + 3?"}, {"role": "assistant", "content": "6."},
              {"role": "user", "content": "4 + 4?"}, {"role": "assistant", "content": "8, of course."}]
    with pytest.raises(chat.TemplateError, match="1 trained spans for 3 assistant turns"):
        chat.render(dialog, smol_tokenizer, "all_assistant", qwen3)
    assert chat.render(dialog[:2], smol_tokenizer, "all_assistant", qwen3).num_trained > 0  # one turn: fine
    final = chat.render(dialog, smol_tokenizer, "final_turn", qwen3)
    trained = smol_tokenizer.decode([t for t in final.labels if t != chat.IGNORE_INDEX])
    assert trained.endswith("8, of course.<|im_end|>") and "4." not in trained
    spans = chat._label_runs(chat.render(dialog, smol_tokenizer, "all_assistant", qwen3_training).labels)
    assert len(spans) == 3
