"""Data read through Ray Data: one schema over all files; held-out splits."""
import json

import pytest

from rlhf_ray import data

pytestmark = [pytest.mark.ray, pytest.mark.timeout(300)]


def test_a_column_only_a_later_file_carries_is_kept_and_null_elsewhere(ray_cluster, tmp_path):
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_text("".join(json.dumps({"prompt": [{"role": "user", "content": f"q{i}"}]}) + "\n" for i in range(3)))
    b.write_text("".join(json.dumps({"prompt": [{"role": "user", "content": f"r{i}"}], "answer": str(i)}) + "\n"
                         for i in range(2)))
    rows, bad = data.read_dataset([a, b], "prompt")
    got = sorted((r["_file"].split("/")[-1], r["_line"], r["answer"]) for r in rows.take_all())
    assert bad == 0 and got == [("a.jsonl", 1, None), ("a.jsonl", 2, None), ("a.jsonl", 3, None),
                                ("b.jsonl", 1, "0"), ("b.jsonl", 2, "1")]


@pytest.mark.hostile_file
def test_a_column_whose_type_differs_between_files_names_a_row_of_each(ray_cluster, tmp_path):
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    prompt = [{"role": "user", "content": "q"}]
    a.write_text(json.dumps({"prompt": prompt, "answer": "7"}) + "\n" + json.dumps({"prompt": prompt, "answer": None}) + "\n")
    b.write_text(json.dumps({"prompt": prompt}) + "\n" + json.dumps({"prompt": prompt, "answer": 7}) + "\n")
    with pytest.raises(data.DataFileError, match=r"a\.jsonl:1: answer: a string here but a number at \S*b\.jsonl:2; "):
        data.read_dataset([a, b], "prompt", on_bad_rows="quarantine", quarantine_path=tmp_path / "q.jsonl")


@pytest.mark.hostile_file
def test_holding_out_more_rows_than_there_are_names_the_key(ray_cluster):
    import ray.data

    train, held = data.hold_out(ray.data.range(10), 3, "sft.data.eval_rows")
    assert (train.count(), held.count()) == (7, 3)
    with pytest.raises(ValueError, match=r"sft.data.eval_rows=10: the training data has only 10 rows"):
        data.hold_out(ray.data.range(10), 10, "sft.data.eval_rows")


def test_a_hub_dataset_streams_through_ray_data_with_its_rows_named(ray_cluster, tmp_path):
    # A dataset repository folder (what the hub serves), read offline; the Ray tasks find it materialised.
    repo = tmp_path / "org" / "chats"
    repo.mkdir(parents=True)
    rows = [{"prompt": [{"role": "user", "content": f"q{i}"}], "completion": [{"role": "assistant", "content": f"a{i}"}]}
            for i in range(4)] + [{"prompt": "q", "completion": ""}]
    (repo / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    spec = f"hub:{repo}"
    good, bad = data.read_dataset([spec], "sft", on_bad_rows="quarantine", quarantine_path=tmp_path / "q.jsonl")
    assert bad == 1 and sorted(r["_line"] for r in good.take_all()) == [1, 2, 3, 4]
    assert {r["_file"] for r in good.take_all()} == {spec}
    (quarantined,) = [json.loads(line) for line in open(tmp_path / "q.jsonl")]
    assert (quarantined["file"], quarantined["line"], quarantined["field"]) == (spec, 5, "completion[0].content")


@pytest.mark.hostile_file
def test_a_file_whose_every_row_is_quarantined_is_one_line(ray_cluster, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text("".join(json.dumps({"messages": [{"role": "user", "content": "only a question"}]}) + "\n"
                           for _ in range(3)))
    with pytest.raises(data.DataFileError, match=r"bad\.jsonl: all 3 rows are bad \(quarantined in .*q\.jsonl\)"):
        data.read_dataset([bad], "sft", on_bad_rows="quarantine", quarantine_path=tmp_path / "q.jsonl")
    assert len((tmp_path / "q.jsonl").read_text().splitlines()) == 3
