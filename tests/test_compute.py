"""The compute behind each evaluation: training seconds with the evaluations left out, images seen."""

from __future__ import annotations

from ddpm.training import compute
from ddpm.training.compute import TrainingClock, append_evaluation, images_seen, read_evaluations


def test_the_clock_leaves_out_what_runs_paused(monkeypatch):
    now = [100.0]  # a fake clock: no timing in tests
    monkeypatch.setattr(compute.time, "perf_counter", lambda: now[0])
    clock = TrainingClock()
    assert clock.seconds() == 0.0
    clock.start()
    now[0] += 5.0
    with clock.paused():
        now[0] += 20.0
    now[0] += 1.0
    assert clock.seconds() == 6.0


def test_images_seen_count_every_rank_and_micro_batch():
    assert images_seen(100, 128, 1) == 12_800
    assert images_seen(100, 64, 2, accumulate=2) == 25_600


def test_evaluations_append_and_read_back(tmp_path):
    assert read_evaluations(tmp_path) == []
    append_evaluation(tmp_path, {"step": 1, "val/fid": 3.5})
    append_evaluation(tmp_path, {"step": 2, "val/fid": 2.5})
    assert [e["val/fid"] for e in read_evaluations(tmp_path)] == [3.5, 2.5]
