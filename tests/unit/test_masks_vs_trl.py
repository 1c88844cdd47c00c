"""Every chat template TRL ships, masked as transformers' ``return_assistant_tokens_mask`` masks its
``_training`` variant, or refused: never a silently dropped turn.

No Llama/Qwen/Gemma/Phi/gpt-oss/DeepSeek tokenizer can be downloaded here, so each template runs on the
real SmolLM2 BPE tokenizer with the template's markers added as special tokens. Masks are compared
character by character over the identical rendered text (tokenizations may differ where a BPE merge
crosses a turn boundary: we cut there, see chat._encode).

For each template, conversation (with and without a system prompt, with reasoning_content) and mask:
- the ``_training`` variant (``{% generation %}`` marks) is masked exactly as transformers masks it;
- the plain variant (prefix counts) is either refused by ``chat.preflight`` (what the SFT and RM jobs
  run), or trained like the marks but for differences of two justified kinds only:
  "prompt": the generation block starts before the end of the template's own generation prompt (Qwen's
  '\n' after '<|im_start|>assistant', gpt-oss's '<|start|>assistant'): given to the model at inference,
  training it teaches nothing it will emit; "separator": whitespace the template writes after the
  end-of-turn token: generation stops at the end token, so the model never produces it.
"""
import functools
import os
import re

import jinja2
import pytest
import trl
from transformers import AutoTokenizer

from rlhf_ray.core import chat

TEMPLATES = os.path.join(os.path.dirname(trl.__file__), "chat_templates")
# Templates for images, video or diffusion models: their messages hold content parts, not the text rows
# rlhf_ray trains on.
MULTIMODAL = {"idefics3", "llava_next", "qwen2_5_vl", "qwen3_vl", "smolvlm", "diffusion_gemma"}
NAMES = sorted(f[: -len("_training.jinja")] for f in os.listdir(TEMPLATES)
               if f.endswith("_training.jinja") and f[: -len("_training.jinja")] not in MULTIMODAL)
MARKERS = re.compile(r"<\|[^<>|\s]+\|>|<｜[^｜]+｜>|<start_of_turn>|<end_of_turn>")
# TRL's training variant writes the think block into every assistant turn (so that the rendering is
# prefix-preserving); the plain template only into the turns after the last user message.
RENDERED_DIFFERENTLY = {"qwen3"}
# Tokens the templates write through variables.
ROLES = {"bos_token": "<bos>", "eos_token": "<|endoftext|>"}
EOS = {"gptoss": "<|return|>", "llama3": "<|eot_id|>", "gemma": "<end_of_turn>", "gemma3": "<end_of_turn>"}

SYSTEM = {"role": "system", "content": "You answer in one line."}
DIALOG = [
    {"role": "user", "content": "Name a prime number."},
    {"role": "assistant", "content": "Seven is prime."},
    {"role": "user", "content": "And an even one?"},
    {"role": "assistant", "content": "Two: the only even prime."},
]
REASONING = [DIALOG[0], {**DIALOG[1], "reasoning_content": "Seven has no divisors but 1 and 7."},
             DIALOG[2], {**DIALOG[3], "reasoning_content": "Every other even number divides by 2."}]
CONVERSATIONS = {"dialog": DIALOG, "system": [SYSTEM, *DIALOG], "reasoning": REASONING}


@functools.lru_cache(maxsize=None)
def tokenizer_for(name, policy_dir, variant=""):
    with open(os.path.join(TEMPLATES, f"{name}{variant}.jinja"), encoding="utf-8") as f:
        source = f.read()
    tok = AutoTokenizer.from_pretrained(policy_dir)
    markers = sorted(set(MARKERS.findall(source)) | {ROLES["bos_token"], EOS.get(name, ROLES["eos_token"])})
    tok.add_special_tokens({"additional_special_tokens": markers, "bos_token": ROLES["bos_token"],
                            "eos_token": EOS.get(name, ROLES["eos_token"])}, replace_extra_special_tokens=False)
    tok.add_tokens(["<think>", "</think>"])  # added, not special, as in Qwen3's and DeepSeek's tokenizers
    tok.chat_template = source
    return tok


def reference_char_mask(tok, messages):
    out = tok.apply_chat_template(messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    text = tok.apply_chat_template(messages, tokenize=False)
    offsets = tok(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    assert len(offsets) == len(out["input_ids"])
    mask = [0] * len(text)
    for (a, b), m in zip(offsets, out["assistant_masks"]):
        mask[a:b] = [m] * (b - a)
    return text, mask


def our_char_mask(tok, messages, strategy):
    r = chat.render(messages, tok, strategy)
    text, mask = "", []
    for t, label in zip(r.input_ids, r.labels):
        piece = tok.decode([t], skip_special_tokens=False)
        text += piece
        mask += [int(label != chat.IGNORE_INDEX)] * len(piece)
    return text, mask


def diff_runs(text, ref, ours):
    runs, j = [], 0
    while j < len(text):
        if ref[j] == ours[j]:
            j += 1
            continue
        k = j
        while k < len(text) and ref[k] != ours[k] and ref[k] == ref[j]:
            k += 1
        runs.append((j, text[j:k], "ref only" if ref[j] else "ours only"))
        j = k
    return runs


def last_run_only(mask):
    end = max(i for i, m in enumerate(mask) if m) + 1
    start = end
    while start > 0 and mask[start - 1]:
        start -= 1
    return [int(start <= i < end) for i in range(len(mask))]


def classify(tok, messages, text, at, run):
    """Why a character run is trained by the marks and not by prefix counts (see the module docstring)."""
    for i, m in enumerate(messages):
        if m["role"] == "assistant":
            prompt = chat.render_text(messages[:i], tok, add_generation_prompt=True)
            if at < len(prompt) <= at + len(run) and text.startswith(prompt):
                return "prompt"
    special = {tok.decode([t]) for t in tok.all_special_ids}
    if not run.strip() and any(text[:at].endswith(s) for s in special):
        return "separator"
    return "unexplained"


def template_refuses(tok, messages) -> bool:
    """The template itself raises on the conversation (Gemma on a system message): no row of it trains."""
    try:
        tok.apply_chat_template(messages, tokenize=False)
    except jinja2.TemplateError:
        return True
    return False


@pytest.mark.parametrize("conversation", sorted(CONVERSATIONS))
@pytest.mark.parametrize("name", NAMES)
def test_training_templates_are_masked_by_their_generation_marks(name, conversation, policy_dir):
    tok, messages = tokenizer_for(name, policy_dir, "_training"), CONVERSATIONS[conversation]
    if template_refuses(tok, messages):
        with pytest.raises((jinja2.TemplateError, chat.TemplateError)):
            chat.render(messages, tok, "all_assistant")
        return
    if conversation == "reasoning" and "reasoning_content" not in tok.chat_template:
        with pytest.raises(chat.TemplateError, match="never writes it"):
            chat.render(messages, tok, "all_assistant")
        return
    text, ref = reference_char_mask(tok, messages)
    for mask, expected in (("all_assistant", ref), ("final_turn", last_run_only(ref))):
        ours_text, ours = our_char_mask(tok, messages, mask)
        assert ours_text == text
        assert diff_runs(text, expected, ours) == [], mask


@pytest.mark.parametrize("conversation", sorted(CONVERSATIONS))
@pytest.mark.parametrize("name", NAMES)
def test_plain_templates_are_masked_like_the_marks_or_refused(name, conversation, policy_dir):
    """Prefix counts on the plain template against the marks of its training variant."""
    plain, marked = tokenizer_for(name, policy_dir), tokenizer_for(name, policy_dir, "_training")
    messages = CONVERSATIONS[conversation]
    if template_refuses(marked, messages) or (conversation == "reasoning" and "reasoning_content" not in plain.chat_template):
        return  # refused by both variants: the test above
    text, ref = reference_char_mask(marked, messages)
    for mask, expected in (("all_assistant", ref), ("final_turn", last_run_only(ref))):
        refusal = chat.preflight([("chats.jsonl:1", messages)], plain, None, mask)
        if refusal:
            assert refusal.startswith("chats.jsonl:1: chat template") and "mask" in refusal
            continue
        ours_text, ours = our_char_mask(plain, messages, mask)
        if name in RENDERED_DIFFERENTLY:  # no marks to compare with: the doctor checked each trained span
            assert ours_text != text and sum(ours) > 0
            continue
        assert ours_text == text, "the plain and training variants render differently"
        runs = diff_runs(text, expected, ours)
        assert all(side == "ref only" for _, _, side in runs), runs
        kinds = {classify(plain, messages, text, at, t) for at, t, _ in runs}
        assert kinds <= {"prompt", "separator"}, (mask, runs)


@pytest.mark.parametrize("name", ["gemma", "gptoss", "llama3", "phi3", "qwen2_5"])
def test_doctor_on_real_templates(name, policy_dir):
    tok = tokenizer_for(name, policy_dir, "_training")
    report = chat.doctor([DIALOG] if name == "gemma" else [DIALOG, [SYSTEM, *DIALOG]], tok)
    assert report.ok, report.summary()
    # Phi-3 drops its final EOS and gpt-oss swaps <|return|> for <|end|> once a turn is not the last.
    assert report.prefix_preserving == (name not in ("phi3", "gptoss")), report.summary()


def test_the_jobs_refuse_qwen3_with_all_assistant_and_accept_its_final_turn(smol_tokenizer):
    # Qwen3's own template writes an empty think block only into the last turn and drops earlier turns'
    # reasoning: prefix counts would train only the last answer, silently.
    qwen3 = os.path.join(TEMPLATES, "qwen3.jinja")
    examples = [("chats.jsonl:7", DIALOG)]
    refused = chat.preflight(examples, smol_tokenizer, qwen3, "all_assistant")
    assert refused.startswith(f"chats.jsonl:7: chat template {qwen3} with mask=all_assistant: turns 1..")
    assert "not a prefix" in refused and "mask: final_turn" in refused
    assert chat.preflight(examples, smol_tokenizer, qwen3, "final_turn") is None
    assert chat.preflight(examples, smol_tokenizer, None, "all_assistant") is None  # SmolLM2's ChatML


def test_rlhf_ray_doctor_prints_the_verdict_the_sft_job_enforces(policy_dir, tmp_path, capsys):
    import json

    from rlhf_ray.cli import main as cli

    chats = tmp_path / "chats.jsonl"
    chats.write_text(json.dumps({"messages": DIALOG}) + "\n")
    assert cli.main(["doctor", str(chats), "--template", os.path.join(TEMPLATES, "qwen3.jinja")]) == 1
    assert "SFT job: refuses: conversation 0: chat template" in capsys.readouterr().out
    assert cli.main(["doctor", str(chats)]) == 0
    assert "SFT job: trains it" in capsys.readouterr().out


def test_reasoning_is_trained_in_the_final_turn_and_dropped_from_earlier_ones_as_the_template_does(policy_dir):
    tok = tokenizer_for("qwen3", policy_dir)
    r = chat.render(REASONING, tok, "final_turn")
    text = tok.decode(r.input_ids, skip_special_tokens=False)
    trained = tok.decode([t for t in r.labels if t != chat.IGNORE_INDEX], skip_special_tokens=False)
    assert trained == ("<think>\nEvery other even number divides by 2.\n</think>\n\n"
                       "Two: the only even prime.<|im_end|>")
    assert "Seven has no divisors" not in text  # Qwen3 drops an earlier turn's reasoning at inference too
    with pytest.raises(chat.TemplateError, match="never writes it"):  # SmolLM2's ChatML has no place for it
        chat.render(REASONING, AutoTokenizer.from_pretrained(policy_dir), "final_turn")


def test_trl_templates_are_accepted_by_name(smol_tokenizer):
    assert chat.resolve_template(smol_tokenizer, "qwen3_training") == open(
        os.path.join(TEMPLATES, "qwen3_training.jinja"), encoding="utf-8").read()
    with pytest.raises(chat.TemplateError, match="or a template trl ships \\(.*qwen3_training"):
        chat.resolve_template(smol_tokenizer, "qwen9")


def test_the_reward_model_job_refuses_a_template_whose_final_turn_has_no_end_token(policy_dir, tmp_path):
    from rlhf_ray import models
    from rlhf_ray.config import ModelConfig
    from rlhf_ray.stages import reward_model

    plain = tmp_path / "plain.jinja"
    plain.write_text("{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '\\n' }}{% endfor %}")
    row = {"prompt": DIALOG[:1], "chosen": DIALOG[1:2], "rejected": [{"role": "assistant", "content": "Eight."}]}
    examples = [("pairs.jsonl:3", c) for c in reward_model.conversations(row)]
    model = ModelConfig(name=str(policy_dir), template=str(plain))
    with pytest.raises(chat.TemplateError, match=r"^pairs.jsonl:3: chat template .*plain.jinja with mask=final_turn: "
                                                 r"span .* \+ an end token; .*\(reward.train.template_check=warn"):
        models.check_template(model, "final_turn", "error", "reward.train.template_check", examples)
    with pytest.warns(UserWarning, match="pairs.jsonl:3"):
        models.check_template(model, "final_turn", "warn", "reward.train.template_check", examples)
    models.check_template(ModelConfig(name=str(policy_dir)), "final_turn", "error", "reward.train.template_check", examples)
