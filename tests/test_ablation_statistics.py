"""The report's statistics: 95% t intervals over seeds, paired differences against softmax
(pairs are runs of the same config and seed), the * where an interval excludes 0, and the
wall-time ratio."""

import math

from mmkit.ablation.statistics import (
    Summary,
    comparison_table,
    interval_text,
    paired_differences,
    per_normalizer,
    time_ratios,
)

T_975_DF2 = 4.302653  # Student t, 97.5% quantile, 2 degrees of freedom (any t table)


def rows_of(values: dict[str, dict[int, float]], walls: dict[str, float] | None = None) -> list[dict]:
    return [{"config": "configs/vit/mnist.yaml", "normalizer": n, "seed": s, "test/acc1": v,
             "wall_s": (walls or {}).get(n, 10.0)}
            for n, by_seed in values.items() for s, v in by_seed.items()]


def test_the_interval_is_the_t_interval_of_the_mean():
    values = [0.90, 0.93, 0.92]
    summary = Summary.of(values)
    mean = sum(values) / 3
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / 2)
    assert math.isclose(summary.mean, mean) and math.isclose(summary.std, std)
    assert math.isclose(summary.half, T_975_DF2 * std / math.sqrt(3), rel_tol=1e-6)
    assert Summary.of([0.5]).half is None and interval_text(Summary.of([0.5])) == "0.5 (n = 1)"


def test_pairing_by_seed_finds_a_consistent_gain_that_unpaired_intervals_miss():
    # the seeds differ a lot from each other, but multimax beats softmax by 0.01 on every seed
    soft = {0: 0.80, 1: 0.90, 2: 0.85}
    rows = rows_of({"softmax": soft, "multimax": {s: v + 0.01 + 0.001 * s for s, v in soft.items()}})
    alone = per_normalizer(rows, "mnist", "test/acc1")
    assert alone["multimax"].mean - alone["multimax"].half < alone["softmax"].mean + alone["softmax"].half
    diff = paired_differences(rows, "mnist", "test/acc1")["multimax"]
    assert diff.n == 3 and math.isclose(diff.mean, 0.011) and diff.excludes_zero()
    assert "softmax" not in paired_differences(rows, "mnist", "test/acc1")


def test_only_common_seeds_are_paired_and_one_pair_claims_nothing():
    rows = rows_of({"softmax": {0: 0.8, 1: 0.9}, "entmax15": {1: 0.95, 7: 0.1}, "sparsemax": {5: 0.9}})
    diffs = paired_differences(rows, "mnist", "test/acc1")
    assert set(diffs) == {"entmax15"}  # sparsemax shares no seed with softmax
    assert diffs["entmax15"].n == 1 and not diffs["entmax15"].excludes_zero()
    table = comparison_table(rows, ["mnist"], ["test/acc1"], ["softmax", "entmax15", "sparsemax"])
    assert "| mnist | test/acc1 | entmax15 | +0.05 (n = 1) | 1 |" in table
    assert "*" not in table.split("\n\n")[0]


def test_a_difference_whose_interval_holds_zero_is_not_marked():
    rows = rows_of({"softmax": {0: 0.80, 1: 0.90, 2: 0.85}, "multimax": {0: 0.82, 1: 0.88, 2: 0.86}})
    diff = paired_differences(rows, "mnist", "test/acc1")["multimax"]
    assert not diff.excludes_zero()
    table = comparison_table(rows, ["mnist"], ["test/acc1"], ["multimax"])
    line = next(row for row in table.splitlines() if "| multimax |" in row)
    assert "*" not in line and f"[{diff.mean - diff.half:.4g}, {diff.mean + diff.half:.4g}]" in line


def test_time_ratio_and_no_baseline():
    rows = rows_of({"softmax": {0: 0.8, 1: 0.9}, "multimax": {0: 0.8, 1: 0.9}}, walls={"softmax": 10.0,
                                                                                       "multimax": 13.0})
    assert math.isclose(time_ratios(rows, "mnist")["multimax"], 1.3)
    assert "| 1.30x |" in comparison_table(rows, ["mnist"], ["test/acc1"], ["multimax"])
    assert comparison_table(rows_of({"multimax": {0: 0.8}}), ["mnist"], ["test/acc1"], ["multimax"]) is None


def test_a_difference_that_is_the_same_on_every_seed_claims_nothing():
    # e.g. seeds that vary nothing: the interval has zero width, which is no replication evidence
    soft = {0: 0.812, 1: 0.812, 2: 0.812}
    rows = rows_of({"softmax": soft, "multimax": {s: v + 0.014 for s, v in soft.items()}})
    diff = paired_differences(rows, "mnist", "test/acc1")["multimax"]
    assert diff.n == 3 and diff.no_spread and not diff.excludes_zero()
    table = comparison_table(rows, ["mnist"], ["test/acc1"], ["multimax"])
    line = next(row for row in table.splitlines() if "| multimax |" in row)
    assert "+0.014 (the same for all 3)" in line and "*" not in line
    assert not Summary.of([0.8, 0.81]).no_spread and not Summary.of([0.8]).no_spread
