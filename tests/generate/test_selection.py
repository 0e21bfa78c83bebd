"""Top-k, the one selection of decoding: the fast partial selection equals the stable-sort oracle, values and
indices, ties included (equal scores: the lower index first) -- on every backend; kth_largest equals a full sort."""
from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import backends
from scratch.generate.selection import kth_largest, top_k, top_k_reference

FIXTURE_OK = settings(suppress_health_check=[HealthCheck.function_scoped_fixture])

# Few distinct values, so that rows tie -- also exactly at the k-th place, where a partial selection may pick any
# of the equal entries -- and -inf entries, as banned tokens and dead beams give.
TIED = [-np.inf, -1e9, -2.5, 0.0, 0.5, 3.0]


@given(st.integers(1, 4), st.integers(2, 60), st.data())
def test_top_k_fast_path_equals_the_sort_oracle(rows, n, data):
    k = data.draw(st.integers(1, n))
    # Any float32 values, and a few repeated ones: ties anywhere in the row, at the k-th place too.
    values = data.draw(st.lists(st.one_of(st.floats(-50, 50, width=32), st.sampled_from(TIED)), min_size=rows * n,
                                max_size=rows * n))
    scores = np.array(values, dtype=np.float32).reshape(rows, n)
    fast_values, fast_index = top_k(scores, k)
    ref_values, ref_index = top_k_reference(scores, k)
    np.testing.assert_array_equal(fast_index, ref_index)
    np.testing.assert_array_equal(fast_values, ref_values)
    assert fast_values.dtype == np.float32 and fast_index.dtype == np.int64


@FIXTURE_OK
@given(st.integers(1, 3), st.integers(2, 60), st.data())
def test_top_k_equals_the_oracle_with_ties(backend, rows, n, data):
    k = data.draw(st.integers(1, max(1, n // 5)))          # mostly rows long enough for the partial selection
    values = data.draw(st.lists(st.sampled_from(TIED), min_size=rows * n, max_size=rows * n))
    scores = backend.asarray(np.array(values, dtype=np.float32).reshape(rows, n), dtype="float32")
    fast_values, fast_index = top_k(scores, k)
    ref_values, ref_index = top_k_reference(scores, k)
    np.testing.assert_array_equal(backend.to_numpy(fast_index), backend.to_numpy(ref_index))
    np.testing.assert_array_equal(backend.to_numpy(fast_values), backend.to_numpy(ref_values))
    assert backends.namespace_of(fast_values) is backend.xp and fast_index.dtype == backend.xp.int64


def test_top_k_ties_lower_index_first(backend):
    scores = backend.asarray(np.array([[1.0, 3.0, 3.0, -np.inf, 2.0]], dtype=np.float32))
    for select in (top_k_reference, top_k):
        values, index = select(scores, 3)
        assert backend.to_numpy(index).tolist() == [[1, 2, 4]]
        assert backends.namespace_of(values) is backend.xp
    row = np.zeros((1, 12), dtype=np.float32)
    row[0, :4] = [3.0, 1.0, 1.0, 1.0]
    _, index = top_k(backend.asarray(row), 2)
    assert backend.to_numpy(index).tolist() == [[0, 1]]          # three tied for 2nd place: the lowest index


@FIXTURE_OK
@given(st.integers(1, 3), st.integers(1, 40), st.integers(-2, 45), st.data())
def test_kth_largest_equals_a_full_sort(backend, rows, n, k, data):
    values = data.draw(st.lists(st.one_of(st.floats(-50, 50, width=32), st.sampled_from([-np.inf, 0.5])),
                                min_size=rows * n, max_size=rows * n))
    host = np.array(values, dtype=np.float32).reshape(rows, n)
    place = max(1, min(k, n))                                    # k clipped to [1, n], as transformers clips it
    expected = -np.sort(-host, axis=-1)[:, place - 1:place]
    got = kth_largest(backend.asarray(host, dtype="float32"), k)
    np.testing.assert_array_equal(backend.to_numpy(got), expected)
