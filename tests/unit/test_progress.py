"""Console progress lines: what a stage prints while it runs."""
import os

from rlhf_ray import progress


def test_clock_reads_as_minutes_and_hours():
    assert [progress.clock(s) for s in (0, 59.6, 75, 3725)] == ["0s", "1m00s", "1m15s", "1h02m"]


def test_a_stage_line_has_rows_of_the_total_rate_and_time_left():
    assert progress.line("generate", 30, 120, 60.0, "prompts") == \
        "[generate] 30/120 prompts (25%), 0.50 prompts/s, 3m00s left"
    assert progress.line("score", 0, 10, 5.0, "candidates") == "[score] 0/10 candidates (0%), 0.00 candidates/s, starting"
    # A retried call counts twice: never more than the total.
    assert progress.line("score", 12, 10, 4.0, "candidates") == \
        "[score] 10/10 candidates (100%), 2.50 candidates/s, done in 4s"


def test_labels_name_the_stage_folder_relative_to_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert progress.label("generate", tmp_path / "runs/tiny/rs/round1/generate") == "generate runs/tiny/rs/round1"
    assert progress.label("score", "s3://bucket/run/score/") == "score s3://bucket/run"
    outside = os.path.dirname(str(tmp_path))
    assert progress.label("score", f"{outside}/run/score") == f"score {outside}/run"


def test_training_lines_every_n_steps_the_last_and_those_with_held_out_figures():
    clock = progress.StepClock(step=0, total=10, every=4)
    start = clock.start
    lines = {s: clock.line("sft", {"step": s, "loss": 1.0 / s, "lr": 1e-4, **({"eval_loss": 0.5} if s == 3 else {})},
                           now=start + 2.0 * s) for s in range(1, 11)}
    assert [s for s, line in lines.items() if line] == [3, 4, 8, 10]
    assert lines[4] == "[sft] step 4/10 loss 0.25 lr 0.0001, 12s left"
    assert lines[3] == "[sft] step 3/10 loss 0.3333 lr 0.0001 eval_loss 0.5, 14s left"
    assert lines[10] == "[sft] step 10/10 loss 0.1 lr 0.0001, done in 20s"


def test_a_resumed_run_paces_from_the_step_it_resumed_at():
    clock = progress.StepClock(step=6, total=10, every=1)
    assert clock.line("rm", {"step": 8, "loss": 0.5, "lr": 1e-5}, now=clock.start + 10.0) == \
        "[rm] step 8/10 loss 0.5 lr 1e-05, 10s left"


def test_a_label_without_a_working_directory_keeps_the_path(tmp_path, monkeypatch):
    gone = tmp_path / "gone"
    gone.mkdir()
    monkeypatch.chdir(gone)
    gone.rmdir()
    assert progress.label("generate", "/data/run/rs/round1/generate") == "generate /data/run/rs/round1"
