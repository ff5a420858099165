"""Progress off a terminal: plain lines every 10 % of the work, the last one always."""

from __future__ import annotations

from asft.progress import progress_bar


def test_log_lines_every_tenth_and_at_the_end(capsys):
    bar = progress_bar(25, "train sft", unit="steps")
    for step in range(25):
        bar.set_postfix(loss=f"{1 / (step + 1):.3f}")
        bar.update(1)
    bar.close()
    lines = capsys.readouterr().err.splitlines()
    # pytest's captured stderr is not a terminal: stride round(2.5) = 2 -> 2, 4, ..., 24, then 25
    assert [line.split()[2] for line in lines] == [f"{n}/25" for n in range(2, 25, 2)] + ["25/25"]
    assert lines[-1].startswith("train sft: 25/25 steps in ") and lines[-1].endswith("loss=0.040")


def test_resumed_bar_counts_from_its_start_and_disabled_bar_is_silent(capsys):
    bar = progress_bar(10, "train asft", initial=7)
    for _ in range(3):
        bar.update(1)
    progress_bar(10, "quiet", enabled=False).update(10)
    assert [line.split()[2] for line in capsys.readouterr().err.splitlines()] == ["8/10", "9/10", "10/10"]
