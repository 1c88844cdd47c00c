"""Our masks against transformers' ``return_assistant_tokens_mask`` on the real TRL training templates.

No Llama/Qwen/Gemma/Phi/gpt-oss tokenizer can be downloaded here, so each template runs on the real
SmolLM2 BPE tokenizer with that template's markers added as special tokens. Tokenizations of the two
sides may differ where a BPE merge crosses a turn boundary (we cut there, see chat._encode), so masks
are compared character by character over the identical rendered text.

Every difference is listed below and is one of two kinds, checked for each run:
- "prompt": TRL's {% generation %} block starts before the end of the template's own generation
  prompt (Qwen 2.5's '\\n' after '<|im_start|>assistant', gpt-oss's '<|start|>assistant'). Those
  characters are given to the model at inference; training them teaches nothing it will emit.
- "separator": whitespace the template writes after the end-of-turn token (ChatML/Gemma/Phi-3 '\\n').
  Generation stops at the end token, so the model never produces it.
"""
import os

import pytest
import trl
from transformers import AutoTokenizer

from rlhf_ray import chat

TEMPLATES = os.path.join(os.path.dirname(trl.__file__), "chat_templates")

# template → (special tokens to add, role tokens, expected differences: (text, kind) in order)
CASES = {
    "llama3": (["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
               {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"}, []),
    "qwen2_5": ([], {}, [("\n", "prompt"), ("\n", "separator")] * 2),
    "gemma": (["<bos>", "<start_of_turn>", "<end_of_turn>"], {"bos_token": "<bos>", "eos_token": "<end_of_turn>"},
              [("\n", "separator")] * 2),
    # Phi-3 trains '<|end|>\n<|endoftext|>' on the final turn in both; mid-conversation the '\n' differs.
    "phi3": (["<|system|>", "<|user|>", "<|assistant|>", "<|end|>"], {"eos_token": "<|endoftext|>"},
             [("\n", "separator")]),
    "gptoss": (["<|start|>", "<|end|>", "<|message|>", "<|channel|>", "<|return|>", "<|call|>", "<|constrain|>"],
               {"eos_token": "<|return|>"}, [("<|start|>assistant", "prompt")] * 2),
}
SYSTEM = {"role": "system", "content": "You answer in one line."}
DIALOG = [
    {"role": "user", "content": "Name a prime number."},
    {"role": "assistant", "content": "Seven is prime."},
    {"role": "user", "content": "And an even one?"},
    {"role": "assistant", "content": "Two: the only even prime."},
]


def tokenizer_for(name, policy_dir):
    specials, roles, _ = CASES[name]
    tok = AutoTokenizer.from_pretrained(policy_dir)
    tok.add_special_tokens({"additional_special_tokens": specials, **roles}, replace_extra_special_tokens=False)
    with open(os.path.join(TEMPLATES, f"{name}_training.jinja"), encoding="utf-8") as f:
        tok.chat_template = f.read()
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


def conversations(name):
    # Gemma's template raises on a system message; the others run with and without one.
    return [DIALOG] if name == "gemma" else [DIALOG, [SYSTEM, *DIALOG]]


def last_run_only(mask):
    end = max(i for i, m in enumerate(mask) if m) + 1
    start = end
    while start > 0 and mask[start - 1]:
        start -= 1
    return [int(start <= i < end) for i in range(len(mask))]


@pytest.mark.parametrize("name", sorted(CASES))
def test_all_assistant_matches_trl_generation_marks(name, policy_dir):
    tok = tokenizer_for(name, policy_dir)
    for messages in conversations(name):
        text, ref = reference_char_mask(tok, messages)
        ours_text, ours = our_char_mask(tok, messages, "all_assistant")
        assert ours_text == text
        runs = diff_runs(text, ref, ours)
        assert all(side == "ref only" for _, _, side in runs), runs
        assert [(t, classify(tok, messages, text, at, t)) for at, t, _ in runs] == CASES[name][2]


@pytest.mark.parametrize("name", sorted(CASES))
def test_final_turn_matches_trl_last_generation_block(name, policy_dir):
    tok = tokenizer_for(name, policy_dir)
    for messages in conversations(name):
        text, ref = reference_char_mask(tok, messages)
        _, ours = our_char_mask(tok, messages, "final_turn")
        runs = diff_runs(text, last_run_only(ref), ours)
        expected = [d for d in CASES[name][2] if d[1] == "prompt"][-1:] + [
            d for d in CASES[name][2] if d[1] == "separator" and name != "phi3"][-1:]
        assert [(t, classify(tok, messages, text, at, t)) for at, t, _ in runs] == expected


def classify(tok, messages, text, at, run):
    """Why a character run is trained by TRL and not by us (see the module docstring)."""
    for i, m in enumerate(messages):
        if m["role"] == "assistant":
            prompt = chat.render_text(messages[:i], tok, add_generation_prompt=True)
            if at < len(prompt) <= at + len(run) and text.startswith(prompt):
                return "prompt"
    special = {tok.decode([t]) for t in tok.all_special_ids}
    if not run.strip() and any(text[:at].endswith(s) for s in special):
        return "separator"
    return "unexplained"


@pytest.mark.parametrize("name", sorted(CASES))
def test_doctor_on_real_templates(name, policy_dir):
    tok = tokenizer_for(name, policy_dir)
    report = chat.doctor(conversations(name), tok)
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

    from rlhf_ray import cli

    chats = tmp_path / "chats.jsonl"
    chats.write_text(json.dumps({"messages": DIALOG}) + "\n")
    assert cli.main(["doctor", str(chats), "--template", os.path.join(TEMPLATES, "qwen3.jinja")]) == 1
    assert "SFT job: refuses: conversation 0: chat template" in capsys.readouterr().out
    assert cli.main(["doctor", str(chats)]) == 0
    assert "SFT job: trains it" in capsys.readouterr().out
