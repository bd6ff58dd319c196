"""One model scored from several threads at once: each call gets its own row's score and surprises.

`AnomalyModel.score` refills buffers bound to the onnxruntime session in place, and onnxruntime
releases the GIL while it runs, so each thread must have buffers of its own; the batch path
(`score_rows`, fresh arrays) is the reference.
"""

from __future__ import annotations

import random
import threading

import numpy as np

from authz_server.risk import FEATURE_NAMES, AnomalyModel
from authz_server.risk.features import FEATURES


def _rows(seed: int, count: int) -> list[list[float]]:
    rng = random.Random(seed)
    return [[rng.uniform(0.0, f.high) for f in FEATURES] for _ in range(count)]


def test_concurrent_single_row_scores_match_the_batch_scores_of_the_same_rows() -> None:
    model = AnomalyModel.load("")
    per_thread = {seed: _rows(seed, 300) for seed in range(4)}
    results: dict[int, list[tuple[float, list[float]]]] = {}
    start = threading.Barrier(len(per_thread))

    def score_all(seed: int) -> None:
        start.wait()
        results[seed] = [model.score(row) for row in per_thread[seed]]

    threads = [threading.Thread(target=score_all, args=(seed,)) for seed in per_thread]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)

    assert sorted(results) == sorted(per_thread)
    for seed, rows in per_thread.items():
        scores, errors = model.score_rows(np.array(rows, dtype=np.float32))
        got_scores = np.array([score for score, _ in results[seed]], dtype=np.float32)
        got_errors = np.array([row_errors for _, row_errors in results[seed]], dtype=np.float32)
        assert got_errors.shape == (len(rows), len(FEATURE_NAMES))
        np.testing.assert_allclose(got_scores, scores, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(got_errors, errors, rtol=1e-5, atol=1e-5)
        assert len({tuple(e) for _, e in results[seed]}) == len(rows)  # distinct rows: no result was shared


def test_a_score_is_plain_python_numbers_and_a_later_call_does_not_change_an_earlier_result() -> None:
    model = AnomalyModel.load("")
    first_row, second_row = _rows(7, 2)
    first_score, first_errors = model.score(first_row)
    kept = (first_score, list(first_errors))
    model.score(second_row)  # the same bound buffers are refilled
    assert (first_score, first_errors) == kept
    assert type(first_score) is float and all(type(e) is float for e in first_errors)
