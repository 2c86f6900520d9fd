from __future__ import annotations

import numpy as np
import pytest

from components.data.deepsense import _ranges, interval_spectra, resample_segments


def test_interval_spectra_layout_matches_a_per_interval_fft():
    rng = np.random.default_rng(0)
    signal = rng.normal(size=(3, 2, 3, 40)).astype(np.float32)  # N=3, sensors=2, axes=3, 4 intervals of 10
    x = interval_spectra(signal, intervals=4)
    assert x.shape == (3, 4, 2, 3, 2, 10) and x.dtype == np.float32
    expected = np.fft.fft(signal[1, 0, 2, 20:30])  # window 1, sensor 0, axis z, interval 2
    np.testing.assert_allclose(x[1, 2, 0, 2, 0], expected.real, atol=1e-5)
    np.testing.assert_allclose(x[1, 2, 0, 2, 1], expected.imag, atol=1e-5)


def test_interval_spectra_refuses_uneven_intervals():
    with pytest.raises(ValueError, match="cannot be cut into 3 equal intervals"):
        interval_spectra(np.zeros((1, 1, 3, 10)), intervals=3)


def test_resampling_reproduces_a_linear_signal_exactly_and_holds_the_edges():
    # two segments with irregular row times; values are linear in time
    times = np.array([0.05, 0.3, 0.62, 0.9, 0.1, 0.5, 0.55])
    values = np.stack([2 * times + 1, -times], axis=1)
    out = resample_segments(times, values, np.array([0, 4]), np.array([4, 7]), points=4)
    assert out.shape == (2, 2, 4)
    targets = (np.arange(4) + 0.5) / 4
    np.testing.assert_allclose(out[0, 0], 2 * targets + 1, atol=1e-6)
    # second segment: rows cover [0.1, 0.55]; the target at 0.875 holds the last value
    np.testing.assert_allclose(out[1, 1], [-0.125, -0.375, -0.55, -0.55], atol=1e-6)


def test_ranges_concatenates_aranges():
    np.testing.assert_array_equal(_ranges(np.array([2, 7, 8]), np.array([4, 8, 11])), [2, 3, 7, 8, 9, 10])
