"""A few rows of every reward-model objective's kind, over one prompt: shared by the unit, data-parallel
and GPU checks (tests/gpu/check.py puts this folder on the path, as pytest does)."""
P = [{"role": "user", "content": "Say something."}]
GOOD, BAD = ["Thanks, happy to help!", "Sure, here it is."], ["No.", "Go away."]


def A(text: str) -> list[dict]:
    return [{"role": "assistant", "content": text}]


def rows_for(objective: str) -> list[dict]:
    if objective in ("bt", "margin"):
        return [{"prompt": P, "chosen": A(g), "rejected": A(b), "margin": 1.0} for g in GOOD for b in BAD]
    if objective in ("kwise", "plackett_luce"):
        return [{"prompt": P, "completions": [A(BAD[0]), A(GOOD[i]), A(BAD[1])], "ranking": [1, 0, 2]} for i in (0, 1)]
    if objective == "orm":
        return [{"prompt": P, "completion": A(t), "label": t in GOOD} for t in GOOD + BAD]
    return [{"prompt": P, "completions": ["Step one is fine.", "Step two is wrong."], "labels": [1, -1]},
            {"prompt": P, "completions": ["Step one is fine.", "Step two is unclear."], "labels": [1, 0]}]


def varied(objective: str) -> list[dict]:
    """``rows_for``'s rows with completions of very different lengths (1 to 25 repeats), so that packing
    puts several sequences in one row and leaves rows partly empty."""
    def longer(text: str, i: int) -> str:
        return " ".join([text] * (1 + (7 * i) % 25))

    out = []
    rows = rows_for(objective)
    for i, row in enumerate(rows * 2 if len(rows) < 4 else rows):  # two sequences never share a row
        row = dict(row)
        for key in ("chosen", "rejected", "completion"):
            if key in row:
                row[key] = A(longer(row[key][0]["content"], i + len(key)))
        if "completions" in row and objective in ("kwise", "plackett_luce"):
            row["completions"] = [A(longer(c[0]["content"], i + j)) for j, c in enumerate(row["completions"])]
        elif "completions" in row:
            row["completions"] = [longer(c, 3 * i + j) for j, c in enumerate(row["completions"])]
        out.append(row)
    return out
