"""Numbers with their spread: scores are the mean over disjoint evaluation sets (by seed) with their deviation."""

import numpy as np
import pytest

from dode.metrics.spread import SETS, check_disjoint, split_by_seed, spread, with_spread


def test_the_evaluation_sets_are_disjoint_and_cover_every_seed():
    chunks = [(range(500), np.arange(0, 500)), (range(500, 1000), np.arange(500, 1000)), ([1500, 1001], np.array([1500, 1001]))]
    sets: dict[int, list[int]] = {}
    for k, rows in split_by_seed(chunks):
        sets.setdefault(k, []).extend(rows.tolist())  # rows are the seeds themselves here
    assert sorted(sets) == list(range(SETS)) and SETS >= 3
    check_disjoint(list(sets.values()))
    assert sorted(s for rows in sets.values() for s in rows) == [*range(1000), 1001, 1500]
    assert all(s % SETS == k for k, rows in sets.items() for s in rows)


def test_overlapping_seeds_are_refused():
    with pytest.raises(ValueError, match="sets 0 and 1 share seed 4"):
        check_disjoint([[1, 4, 7], [4, 10]])
    with pytest.raises(ValueError, match="seed 3 occurs twice"):
        list(split_by_seed([(range(5), np.zeros(5)), (range(3, 6), np.zeros(3))]))
    with pytest.raises(ValueError, match="seed 2 occurs twice"):
        list(split_by_seed([([2, 2], np.zeros(2))]))
    with pytest.raises(ValueError, match="at least 2 disjoint"):
        list(split_by_seed([(range(3), np.zeros(3))], sets=1))


def test_spread_is_the_mean_and_sample_deviation():
    out = spread([35.0, 39.9, 30.8])
    assert out["value"] == pytest.approx(35.2333333) and out["spread"] == pytest.approx(np.std([35.0, 39.9, 30.8], ddof=1))
    assert with_spread(out["value"], out["spread"]) == "35.23 ± 4.6"
    assert with_spread(1.5, None) == "1.5" and with_spread(None, None) == "—"
    with pytest.raises(ValueError, match="at least 2 values"):
        spread([1.0])


def test_a_score_is_the_mean_of_its_disjoint_sets(tmp_path):
    import io

    from dode.metrics.fid import frechet_distance, stats_from_images, stats_to_bytes
    from dode.metrics.scores import extractor, rmse, score_samples
    from dode.metrics.sources import STATS_FILE
    from dode.store.registry import Registry

    reg = Registry(tmp_path / "reg")
    rng = np.random.default_rng(0)

    def samples(key, images):
        buf = io.BytesIO()
        np.save(buf, images)
        return reg.publish("samples", key, {"images.npy": buf.getvalue()}, params={"seeds": [0, len(images)]})

    x, y = (rng.integers(0, 256, (240, 1, 8, 8), dtype=np.uint8) for _ in range(2))
    ext = extractor("fd-pixels")
    ref_stats = stats_from_images(y, ext)
    ref = reg.publish("reference-stats", "ref", {STATS_FILE: stats_to_bytes(ref_stats)})
    got = score_samples(reg, samples("x", x), "fd-pixels", ref)
    parts = [np.arange(240)[np.arange(240) % SETS == k] for k in range(SETS)]
    want = [frechet_distance(stats_from_images(x[p], ext), ref_stats) for p in parts]
    assert got["values"] == pytest.approx(want) and got["value"] == pytest.approx(np.mean(want))
    assert got["spread"] == pytest.approx(np.std(want, ddof=1)) and got["n"] == 240 and got["sets"] == SETS
    paired = score_samples(reg, reg.get(samples("x2", x).id), "rmse", samples("y", y))
    assert paired["values"] == pytest.approx([rmse(x[p], y[p]) for p in parts])
    few = score_samples(reg, samples("few", x[:150]), "fd-pixels", ref)  # 50 per set < 64 dims: one set
    assert few["spread"] is None and few["sets"] == 1 and few["n"] == 150
    assert few["value"] == pytest.approx(frechet_distance(stats_from_images(x[:150], ext), ref_stats))
