import numpy as np
import pytest

from pushcut.policy.action_tokenizer import ActionTokenizer, Normalizer


def test_round_trip_within_half_a_bin():
    tok = ActionTokenizer(256, vocab_size=513)
    x = np.random.default_rng(0).uniform(-1, 1, size=(10_000,))
    x = np.concatenate([x, [-1.0, 1.0, 0.0]])
    back = tok.from_token_ids(tok.to_token_ids(x))
    assert np.max(np.abs(back - x)) <= 1.0 / 256 + 1e-12
    ids = tok.to_token_ids(x)
    assert ids.min() >= 513 - 256 and ids.max() <= 512  # the last 256 vocabulary ids


def test_bins_are_monotone_and_clipped():
    tok = ActionTokenizer(8)
    assert list(tok.to_bins(np.array([-5.0, -1.0, -0.76, 0.0, 0.99, 5.0]))) == [0, 0, 0, 4, 7, 7]
    with pytest.raises(ValueError, match="out of range"):
        tok.from_bins(np.array([8]))


@pytest.mark.parametrize("mode,lo,hi", [("min_max", "min", "max"), ("q01_q99", "q01", "q99")])
def test_normalizer_round_trip(mode, lo, hi):
    stats = {lo: [-2.0, 0.0, 1.0], hi: [2.0, 10.0, 1.0]}
    n = Normalizer(stats, mode, 3)
    a = np.array([[1.0, 5.0, 1.0], [-2.0, 10.0, 1.0]])
    x = n.normalize(a)
    np.testing.assert_allclose(x, [[0.5, 0.0, 0.0], [-1.0, 1.0, 0.0]])
    np.testing.assert_allclose(n.unnormalize(x), a)
    assert n.normalize(np.array([100.0, -100.0, 3.0])).tolist() == [1.0, -1.0, 0.0]  # clipped


def test_missing_or_bad_statistics_are_errors():
    with pytest.raises(KeyError, match="q99"):
        Normalizer({"q01": [0.0]}, "q01_q99", 1)
    with pytest.raises(ValueError, match="shape"):
        Normalizer({"min": [0.0], "max": [1.0]}, "min_max", 2)
    with pytest.raises(ValueError, match="NaN"):
        Normalizer({"min": [np.nan], "max": [1.0]}, "min_max", 1)
    with pytest.raises(ValueError, match="unknown normalization"):
        Normalizer({}, "zscore", 1)
