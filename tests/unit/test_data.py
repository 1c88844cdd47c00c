"""Every bad-record class gets an error naming file, line and field; quarantine keeps and counts them."""
import gzip
import json

import pytest

from rlhf_ray import data
from rlhf_ray.core import schema
from rlhf_ray.core.schema import BadRecord

GOOD_SFT = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}
GOOD_PAIR = {"prompt": [{"role": "user", "content": "Hi"}], "chosen": "Hello", "rejected": "Go away"}


def write_lines(path, lines):
    with open(path, "wb") as f:
        for line in lines:
            f.write(line if isinstance(line, bytes) else (json.dumps(line) if not isinstance(line, str) else line).encode())
            f.write(b"\n")
    return str(path)


def first_error(path, kind, adapter=None):
    with pytest.raises(BadRecord) as e:
        list(data.read_records([path], kind, adapter))
    return e.value


def sft_with(messages):
    return {"messages": messages}


@pytest.mark.parametrize("kind,bad,field,reason", [
    ("sft", sft_with([{"content": "Hi"}, {"role": "assistant", "content": "x"}]), "messages[0].role", "missing"),
    ("sft", sft_with([{"role": "human", "content": "Hi"}, {"role": "assistant", "content": "x"}]),
     "messages[0].role", "unknown role 'human'"),
    ("sft", sft_with([{"role": "user", "content": "  "}, {"role": "assistant", "content": "x"}]),
     "messages[0].content", "empty"),
    ("sft", sft_with([{"role": "user", "content": "a"}, {"role": "user", "content": "b"},
                      {"role": "assistant", "content": "x"}]), "messages[1].role", "two user messages in a row"),
    ("sft", sft_with([{"role": "user", "content": "a"}, {"role": "system", "content": "b"},
                      {"role": "assistant", "content": "x"}]), "messages[1].role", "system message after"),
    ("sft", sft_with([{"role": "assistant", "content": "x"}, {"role": "user", "content": "a"}]),
     "messages[1].role", "the last message must be assistant"),
    ("pairwise", {**GOOD_PAIR, "rejected": "Hello"}, "rejected", "identical to chosen"),
    ("pairwise", {**GOOD_PAIR, "margin": "big"}, "margin", "must be a number"),
    ("kwise", {"prompt": "Hi", "completions": ["a", "b", "c"], "ranking": [0, 0, 1]}, "ranking", "permutation"),
    ("orm", {"prompt": "Hi", "completion": "x", "label": 2}, "label", "true/false"),
    ("prm", {"prompt": "Hi", "completions": ["s1", "s2"], "labels": [1]}, "labels", "one label per step"),
    ("prm", {"prompt": "Hi", "completions": ["s1"], "labels": [2]}, "labels[0]", "-1, 0 or 1"),
])
@pytest.mark.hostile_file
def test_contract_violations_name_file_line_and_field(tmp_path, kind, bad, field, reason):
    good = GOOD_SFT if kind == "sft" else GOOD_PAIR if kind == "pairwise" else None
    lines = ([good] if good else []) + [bad]
    path = write_lines(tmp_path / "rows.jsonl", lines)
    err = first_error(path, kind)
    assert (err.file, err.line, err.field) == (path, len(lines), field)
    assert reason in err.reason
    assert str(err).startswith(f"{path}:{len(lines)}: {field}: ")


@pytest.mark.hostile_file
def test_invalid_json_names_the_line(tmp_path):
    path = write_lines(tmp_path / "rows.jsonl", [GOOD_SFT, GOOD_SFT, '{"messages": [', GOOD_SFT])
    err = first_error(path, "sft")
    assert (err.line, err.field) == (3, "<line>") and "invalid JSON" in err.reason


@pytest.mark.hostile_file
def test_non_utf8_bytes_name_the_line(tmp_path):
    path = write_lines(tmp_path / "rows.jsonl", [GOOD_SFT, b'{"messages": "caf\xe9"}'])
    err = first_error(path, "sft")
    assert (err.line, err.field) == (2, "<line>") and "not valid UTF-8" in err.reason


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
@pytest.mark.hostile_file
def test_nan_and_inf_name_the_field(tmp_path, literal):
    path = write_lines(tmp_path / "rows.jsonl", [
        '{"prompt": "Hi", "chosen": "a", "rejected": "b", "margin": %s}' % literal])
    err = first_error(path, "pairwise")
    assert (err.line, err.field) == (1, "margin") and "finite" in err.reason


@pytest.mark.hostile_file
def test_over_length_after_tokenization_names_file_line_field(tmp_path, smol_tokenizer):
    from rlhf_ray.train.sft_data import encode_sft_row

    long = {"messages": [{"role": "user", "content": "word " * 200}, {"role": "assistant", "content": "ok"}]}
    path = write_lines(tmp_path / "rows.jsonl", [GOOD_SFT, long])
    rows = list(data.parse_file(path, "sft"))
    with pytest.raises(BadRecord) as e:
        encode_sft_row({**rows[1].row, "_file": rows[1].file, "_line": rows[1].line}, smol_tokenizer, max_seq_len=64,
                       overlength="reject")
    assert (e.value.file, e.value.line, e.value.field) == (path, 2, "messages")
    assert "tokens, over max_seq_len=64" in e.value.reason


@pytest.mark.hostile_file
def test_quarantine_keeps_going_and_keeps_every_bad_row(tmp_path):
    path = write_lines(tmp_path / "rows.jsonl", [GOOD_SFT, "not json", GOOD_SFT,
                                                 sft_with([{"role": "user", "content": "only a question"}])])
    bad: list = []
    good = list(data.read_records([path], "sft", on_bad_rows="quarantine", quarantine=bad))
    assert len(good) == 2 and [b.line for b in bad] == [2, 4]
    out = tmp_path / "quarantine.jsonl"
    assert data.write_quarantine(bad, out) == 2
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows[0]["record"] == "not json" and rows[1]["field"] == "messages[0].role"


def test_parquet_and_datasets_folder_and_gz(tmp_path):
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [GOOD_SFT, {"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": ""}]}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "rows.parquet")
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "ds"))
    with gzip.open(tmp_path / "rows.jsonl.gz", "wt") as f:
        f.write("\n".join(json.dumps(r) for r in rows) + "\n")
    for name in ("rows.parquet", "ds", "rows.jsonl.gz"):
        recs = list(data.parse_file(tmp_path / name, "sft"))
        assert recs[0].row["messages"] == GOOD_SFT["messages"]
        assert (recs[1].line, recs[1].field, recs[1].reason) == (2, "messages[1].content", "empty")


def test_hh_adapter_on_real_data(shared_data):
    path = shared_data / "hh_harmless_test.jsonl.gz"
    bad: list = []
    rows = list(data.read_records([path], "pairwise", "hh", on_bad_rows="quarantine", quarantine=bad))
    assert len(rows) + len(bad) == 2312 and len(rows) > 2200
    first = rows[0]
    assert first["prompt"][0] == {"role": "user", "content": "what are some pranks with a pen i can do?"}
    assert first["prompt"][-1]["role"] == "user" and first["chosen"][0]["role"] == "assistant"
    assert all(b.field and b.reason for b in bad)   # every quarantined pair says why


def test_gsm8k_adapters_on_real_data(shared_data):
    prompts = list(data.read_records([shared_data / "gsm8k_test.jsonl"], "prompt", "gsm8k"))
    assert len(prompts) == 1319 and prompts[0]["answer"] == "18"
    orm = list(data.read_records([shared_data / "gsm8k_example_model_solutions.jsonl.gz"], "orm", "gsm8k_solutions"))
    assert len(orm) == 5276 and {r["label"] for r in orm} == {True, False}
    assert orm[0]["completion"][0]["role"] == "assistant"


def test_alpaca_seed_adapter_on_real_data(shared_data):
    rows = list(data.read_records([shared_data / "alpaca_seed_tasks.jsonl"], "sft", "alpaca_seed"))
    assert len(rows) >= 175 and rows[0]["messages"][0]["content"].startswith("Is there anything I can eat")


def test_validate_normalises_string_completions():
    row = schema.validate("pairwise", GOOD_PAIR)
    assert row["chosen"] == [{"role": "assistant", "content": "Hello"}]
    assert row["prompt"] == GOOD_PAIR["prompt"]


def test_prm_rule_by_hand():
    steps = ["She has 3 + 4 = <<3+4=7>>7 apples", "Then 7 * 2 = <<7*2=15>>15", "A: 15"]
    assert data.prm_step_labels(steps, is_correct=False) == [0, -1, -1]
    assert data.prm_step_labels(steps[:1] + ["A: 7"], is_correct=True) == [1, 1]
    assert data.calculation_ok("1,000/4", "250") and data.calculation_ok("2*x", "4") is None


def test_gsm8k_prm_adapter_on_real_data(shared_data):
    rows = list(data.read_records([shared_data / "gsm8k_example_model_solutions.jsonl.gz"], "prm", "gsm8k_prm"))
    assert len(rows) == 5276
    labels = [label for r in rows for label in r["labels"]]
    assert {-1, 0, 1} <= set(labels)
    first = rows[0]  # 6b_finetuning on Janet's ducks: wrong final answer, calculations fine
    assert first["labels"][-1] == -1 and first["completions"][-1] == "A: 26"


@pytest.mark.hostile_file
def test_a_glob_and_a_path_naming_one_file_twice_is_an_error(tmp_path):
    path = write_lines(tmp_path / "a.jsonl", [GOOD_SFT])
    write_lines(tmp_path / "b.jsonl", [GOOD_SFT])
    assert data.expand_paths([str(tmp_path / "*.jsonl")]) == [path, str(tmp_path / "b.jsonl")]
    with pytest.raises(ValueError, match=f"input listed more than once: {path}$"):
        data.expand_paths([str(tmp_path / "*.jsonl"), path])


def test_source_names_are_the_paths_below_the_inputs_common_folder():
    assert data.source_names(["/d/train/p.jsonl", "/d/extra/p.jsonl", "/d/extra/q.jsonl"]) == {
        "/d/train/p.jsonl": "train/p.jsonl", "/d/extra/p.jsonl": "extra/p.jsonl", "/d/extra/q.jsonl": "extra/q.jsonl"}
    assert data.source_names(["s3://b/x/train/p.jsonl", "s3://b/x/extra/p.jsonl"]) == {
        "s3://b/x/train/p.jsonl": "train/p.jsonl", "s3://b/x/extra/p.jsonl": "extra/p.jsonl"}
    assert data.source_names(["/d/a.jsonl", "/d/b.jsonl"]) == {"/d/a.jsonl": "a.jsonl", "/d/b.jsonl": "b.jsonl"}
    assert data.source_names(["/data/prompts.jsonl"]) == {"/data/prompts.jsonl": "prompts.jsonl"}


def _container_faults(tmp_path):
    good = (json.dumps({"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]})
            + "\n").encode() * 50
    truncated = tmp_path / "truncated.jsonl.gz"
    truncated.write_bytes(gzip.compress(good)[:-30])
    (tmp_path / "not_gzip.jsonl.gz").write_bytes(good)
    (tmp_path / "corrupt.parquet").write_bytes(b"PAR1 not really parquet")
    (tmp_path / "empty.jsonl").write_bytes(b"")
    (tmp_path / "blank.jsonl").write_bytes(b"\n\n")
    (tmp_path / "rows.txt").write_text("a,b\n1,2\n")
    (tmp_path / "broken.json").write_text('[{"a": 1}, ')
    return {"truncated.jsonl.gz": "cannot be read", "not_gzip.jsonl.gz": "cannot be read",
            "corrupt.parquet": "not a readable Parquet file", "empty.jsonl": "holds no records",
            "blank.jsonl": "holds no records", "rows.txt": "unknown data format",
            "broken.json": "not a valid JSON array in UTF-8"}


@pytest.mark.hostile_file
def test_a_file_that_cannot_be_read_at_all_is_one_line_naming_it(tmp_path):
    for name, reason in _container_faults(tmp_path).items():
        quarantine = []
        with pytest.raises(data.DataFileError) as e:  # rows cannot be quarantined from it either
            list(data.read_records([tmp_path / name], "sft", on_bad_rows="quarantine", quarantine=quarantine))
        assert str(e.value).startswith(f"{tmp_path / name}: {reason}") and "\n" not in str(e.value), str(e.value)


# ---------------------------------------------------------------- TRL's dataset shapes

U = {"role": "user", "content": "What is 2 + 2?"}
A4, A5 = {"role": "assistant", "content": "4"}, {"role": "assistant", "content": "5"}


@pytest.mark.parametrize("kind,row,expected", [
    # prompt-completion, conversational and standard: one conversation
    ("sft", {"prompt": [U], "completion": [A4]}, {"messages": [U, A4]}),
    ("sft", {"prompt": "What is 2 + 2?", "completion": "4"}, {"messages": [U, A4]}),
    # preference with an implicit prompt: the shared turns up to the last user turn
    ("pairwise", {"chosen": [U, A4], "rejected": [U, A5]}, {"prompt": [U], "chosen": [A4], "rejected": [A5]}),
    ("pairwise", {"chosen": [U, A4, U, A4], "rejected": [U, A4, U, A5]},
     {"prompt": [U, A4, U], "chosen": [A4], "rejected": [A5]}),
    # explicit prompt, standard
    ("pairwise", {"prompt": "What is 2 + 2?", "chosen": "4", "rejected": "5"}, {"prompt": [U], "chosen": [A4], "rejected": [A5]}),
    # unpaired preference
    ("orm", {"prompt": "What is 2 + 2?", "completion": "5", "label": False}, {"prompt": [U], "completion": [A5], "label": False}),
    # stepwise supervision: booleans become +1 / -1
    ("prm", {"prompt": "What is 2 + 2?", "completions": ["2 + 2 = 4.", "So 4."], "labels": [True, False]},
     {"prompt": [U], "completions": ["2 + 2 = 4.", "So 4."], "labels": [1, -1]}),
    ("prompt", {"prompt": "What is 2 + 2?"}, {"prompt": [U]}),
])
def test_trls_dataset_shapes_become_the_rows_each_stage_reads(kind, row, expected):
    from rlhf_ray.core.schema import validate

    assert validate(kind, row) == expected


@pytest.mark.parametrize("kind,row,field,needle", [
    ("sft", {"text": "Once upon a time"}, "text", "language-modelling rows"),
    ("pairwise", {"chosen": "4", "rejected": "5"}, "prompt", "need their prompt in its own column"),
    ("pairwise", {"chosen": [A4], "rejected": [A5]}, "chosen", "implicit prompt needs chosen and rejected to share"),
    ("sft", {"messages": [U, {"role": "assistant", "content": "", "tool_calls": [{"id": "c1"}]}]},
     "messages[1].tool_calls", "tool calls are not rendered yet"),
    ("sft", {"messages": [U, A4], "tools": [{"type": "function"}]}, "tools", "tool definitions are not rendered"),
])
@pytest.mark.hostile_file
def test_a_shape_a_stage_cannot_train_on_is_refused_naming_the_column(kind, row, field, needle):
    from rlhf_ray.core.schema import RowError, validate

    with pytest.raises(RowError) as e:
        validate(kind, row)
    assert e.value.field == field and needle in e.value.reason


# ---------------------------------------------------------------- the ways users have their data


@pytest.mark.hostile_file
def test_csv_and_json_array_files_are_read_and_a_bad_row_is_named_by_its_line(tmp_path):
    (tmp_path / "qa.csv").write_text('prompt,completion\n"What is 2 + 2?",4\n"Short",\n')
    recs = list(data.parse_file(tmp_path / "qa.csv", "sft"))
    assert recs[0].row == {"messages": [U, A4]} and recs[0].line == 2
    assert (recs[1].line, recs[1].field) == (3, "completion[0].content") and recs[1].row is None
    (tmp_path / "ragged.csv").write_text("prompt,completion\na,b,c\n")
    (bad,) = data.parse_file(tmp_path / "ragged.csv", "sft")
    assert bad.reason == "a row with more or fewer cells than the header"
    rows = [{"prompt": [U], "completion": [A4]}, {"messages": [U]}]
    (tmp_path / "rows.json").write_text(json.dumps(rows, indent=2))
    good, broken = data.parse_file(tmp_path / "rows.json", "sft")
    assert good.row == {"messages": [U, A4]} and (broken.line, broken.field) == (2, "messages[0].role")


def upper_user(record):  # a user's adapter: record -> rows
    return [{"prompt": record["q"].upper(), "completion": record["a"]}]


def test_a_users_adapter_is_module_callable(tmp_path):
    (tmp_path / "raw.jsonl").write_text(json.dumps({"q": "what is 2 + 2?", "a": "4"}) + "\n")
    (rec,) = data.parse_file(tmp_path / "raw.jsonl", "sft", f"{__name__}:upper_user")
    assert rec.row["messages"][0]["content"] == "WHAT IS 2 + 2?"
    with pytest.raises(ValueError, match=r"adapter 'nosuchmodule:f': cannot import nosuchmodule"):
        data.get_adapter("nosuchmodule:f")
    with pytest.raises(ValueError, match=r"unknown adapter 'hhh': one of .*, or module:callable"):
        data.get_adapter("hhh")


def test_a_hub_dataset_is_materialised_once_and_read_like_a_file(tmp_path, monkeypatch):
    # A dataset repository as the hub serves it (data files in a folder); datasets reads it offline.
    repo = tmp_path / "my-org" / "qa"
    repo.mkdir(parents=True)
    (repo / "train.jsonl").write_text(json.dumps({"prompt": "What is 2 + 2?", "completion": "4"}) + "\n"
                                      + json.dumps({"prompt": "Hi", "completion": ""}) + "\n")
    (repo / "test.jsonl").write_text(json.dumps({"prompt": "What is 2 + 2?", "completion": "5"}) + "\n")
    monkeypatch.setenv("RLHF_RAY_CACHE", str(tmp_path / "cache"))
    spec = f"hub:{repo}"
    assert data.expand_paths([spec, f"hub:{repo}:test"]) == [spec, f"hub:{repo}:test"]
    good, bad = data.parse_file(spec, "sft")
    assert good.row == {"messages": [U, A4]} and bad.source == f"{spec}:2" and bad.field == "completion[0].content"
    (test_row,) = data.parse_file(f"hub:{repo}:test", "sft")
    assert test_row.row["messages"][1]["content"] == "5"
    (first,) = data.parse_file(f"hub:{repo}:train[:1]", "sft")  # datasets' slices
    assert first.row == good.row
    folders = list((tmp_path / "cache" / "datasets").iterdir())
    assert len(folders) == 3  # one per split, reused by every later read
    (repo / "train.jsonl").unlink()
    assert len(list(data.parse_file(spec, "sft"))) == 2


@pytest.mark.hostile_file
def test_a_hub_dataset_that_cannot_be_loaded_offline_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("RLHF_RAY_CACHE", str(tmp_path))
    with pytest.raises(data.DataFileError) as e:
        data.expand_paths(["hub:trl-lib/Capybara"])
    message = str(e.value)
    assert message.startswith("hub:trl-lib/Capybara: cannot load trl-lib/Capybara split train (HF_HUB_OFFLINE")
    assert "\n" not in message
    with pytest.raises(ValueError, match=r"expected hub:NAME\[:SPLIT\]\[\?config=C&revision=R&data_dir=D\] \(unknown "
                                         r"option cfg\)"):
        data.hub_spec("hub:a/b?cfg=x")
    assert data.hub_spec("hub:openai/gsm8k:train[2000:]?config=main") == ("openai/gsm8k", "train[2000:]", {"config": "main"})


def test_a_column_map_renames_a_datasets_columns_to_the_ones_a_stage_reads(tmp_path):
    from rlhf_ray import config_load
    from rlhf_ray.config import PipelineConfig

    (tmp_path / "qa.jsonl").write_text(json.dumps({"question": "What is 2 + 2?", "best_answer": "4", "id": 7}) + "\n")
    cfg = config_load.load(PipelineConfig, None, ["sft.data.adapter={question: prompt, best_answer: completion}"])
    assert cfg.sft.data.adapter == {"question": "prompt", "best_answer": "completion"}
    (rec,) = data.parse_file(tmp_path / "qa.jsonl", "sft", cfg.sft.data.adapter)
    assert rec.row == {"messages": [U, A4], "id": 7}


@pytest.mark.hostile_file
def test_a_json_line_nested_too_deep_is_a_bad_row_not_a_recursion_error(tmp_path):
    (tmp_path / "deep.jsonl").write_text("[" * 100000 + "]" * 100000 + "\n" + json.dumps({"messages": [U, A4]}) + "\n")
    deep, good = data.parse_file(tmp_path / "deep.jsonl", "sft")
    assert (deep.line, deep.reason) == (1, "JSON nested too deep") and good.row == {"messages": [U, A4]}
