"""Is it really better? summary.verdict against scipy on fixed data, the standings every view reads, and
`cnnlab compare` of configurations on a store of made-up runs (no training)."""

from __future__ import annotations

import json
import random
import re

import pytest
from scipy import stats

from cnnlab import summary

A = [0.701, 0.712, 0.694, 0.705, 0.698]  # test accuracies of 5 seeds
B = [0.716, 0.729, 0.704, 0.719, 0.711]


def test_welch_matches_scipy():
    v = summary.verdict(A, B, a_name="dropout=0", b_name="dropout=0.5")
    ref = stats.ttest_ind(B, A, equal_var=False)
    ci = ref.confidence_interval(0.95)
    assert not v.paired
    assert v.diff == pytest.approx(sum(B) / 5 - sum(A) / 5)
    assert (v.low, v.high, v.p) == (pytest.approx(ci.low), pytest.approx(ci.high), pytest.approx(ref.pvalue))
    assert v.shown and v.better
    assert v.words() == (f"dropout=0.5 is better than dropout=0 by 1.4 points ({v.low * 100:+.2f} to "
                         f"{v.high * 100:+.2f}, p={ref.pvalue:.2g}, 5 seeds each).")


def test_paired_when_both_ran_the_same_seeds_matched_by_seed():
    seeds = [0, 1, 2, 3, 4]
    shuffled = [4, 2, 0, 3, 1]  # B's runs listed in another order: matched by seed, not by position
    b_by_seed = dict(zip(seeds, B))
    v = summary.verdict(A, [b_by_seed[s] for s in shuffled], seeds, shuffled)
    ref = stats.ttest_rel(B, A)
    assert v.paired and v.b_values == B
    assert (v.low, v.high, v.p) == (pytest.approx(ref.confidence_interval(0.95).low),
                                    pytest.approx(ref.confidence_interval(0.95).high), pytest.approx(ref.pvalue))
    assert "paired by seed" in v.words()
    # other seeds on one side: Welch
    assert not summary.verdict(A, B, seeds, [5, 6, 7, 8, 9]).paired
    # a 99% interval is wider than the 95% one
    wide = summary.verdict(A, B, seeds, seeds, confidence=0.99)
    assert wide.low < v.low and wide.high > v.high and wide.p == pytest.approx(v.p)


def test_no_difference_says_how_many_seeds_would_show_it():
    a, b = [0.70, 0.71], [0.705, 0.70]
    v = summary.verdict(a, b, a_name="T0's configuration", b_name="T1's configuration")
    assert not v.shown and v.better is None
    needed = v.seeds_needed()
    assert needed is not None and needed > 2
    # the power calculation: with `needed` seeds each a difference of this size and spread is found 80% of the time
    sd = ((stats.tstd(a) ** 2 + stats.tstd(b) ** 2) / 2) ** 0.5
    def power(n):
        df, ncp = 2 * n - 2, abs(v.diff) / (sd * (2 / n) ** 0.5)
        t = stats.t.ppf(0.975, df)
        return stats.nct.sf(t, df, ncp) + stats.nct.cdf(-t, df, ncp)
    assert power(needed) >= 0.8 > power(needed - 1)
    assert re.fullmatch(rf"no difference shown between T1's configuration and T0's configuration with 2 seeds each "
                        rf"\(-0\.25, [-+][\d.]+ to [-+][\d.]+, p=[\d.]+\); about {needed} seeds each would show a "
                        rf"difference of 0\.25 points, if it is real\.", v.words()), v.words()


def test_one_seed_gives_no_interval_and_says_so():
    v = summary.verdict([0.70], [0.71, 0.72])
    assert v.low is None and v.p is None and not v.shown
    assert "no difference can be shown with 1 and 2 seeds" in v.words() and "--repeats" in v.words()
    assert v.short() == ""


def test_identical_results_and_a_difference_with_no_spread():
    same = summary.verdict([0.7, 0.7, 0.7], [0.7, 0.7, 0.7])
    assert same.p is None and (same.low, same.high) == (0.0, 0.0) and not same.shown
    assert "identical results in every seed" in same.words() and same.short() == "identical"
    exact = summary.verdict([0.7, 0.7], [0.72, 0.72])
    assert exact.shown and exact.better and exact.low == pytest.approx(exact.high) == pytest.approx(0.02)
    assert "better than A by 2.0 points (no spread between seeds, p<0.001" in exact.words()


def test_lower_is_better_for_a_loss():
    v = summary.verdict([0.9, 0.92, 0.91], [0.80, 0.81, 0.79], higher_is_better=False, points=False)
    assert v.shown and v.better and "better" in v.words() and "0.11" in v.words()


def _record(i, config, seed, val, test, sweep=None, params=None):
    from cnnlab.record import Record, Tag

    tags = {Tag.CONFIG_KEY: config, Tag.TRIAL_KEY: f"{config}-{seed}", **({Tag.SWEEP: sweep} if sweep else {})}
    return Record(f"run{i}", f"T{i}", f"T{i}", "e", "1", "FINISHED", i, {"seed": seed, **(params or {})},
                  {"val_acc_best": val, "test_acc": test}, tags)


def test_standings_mark_what_is_tied_with_the_best():
    """Three configurations of 4 seeds: `a` best, `b` within noise of it, `c` clearly below; one of a single seed is
    not judged. (Paired by seed: each seed's noise differs between configurations, as it does in training.)"""
    records, i = [], 0
    noises = {"a": (0.01, -0.012, 0.004, -0.002), "b": (-0.008, 0.011, -0.003, 0.006), "c": (0.0, 0.01, -0.01, 0.0)}
    for config, base in (("a", 0.80), ("b", 0.795), ("c", 0.70)):
        for seed, noise in enumerate(noises[config]):
            records.append(_record(i, config, seed, base + noise, base + noise))
            i += 1
    records.append(_record(i, "d", 0, 0.79, 0.79))
    ranked = summary.groups(records)
    standing = {g.config_key: g.standing for g in ranked}
    assert standing == {"a": "best", "b": "tied", "c": "below", "d": ""}
    by_key = {g.config_key: g for g in ranked}
    assert by_key["c"].against_best.shown and not by_key["b"].against_best.shown and by_key["d"].against_best is None


# ---------------------------------------------------------------- cnnlab compare on made-up runs


@pytest.fixture
def made_up(cli):
    """Experiment `e`: dropout 0 and 0.5 at lr 0.001 (4 seeds each, 0.5 better by about 2 points), dropout 0 at
    lr 0.01 (2 seeds), one run each of a sweep's trials; all recorded through the store, no training."""
    from cnnlab.record import Store, Tag

    store = Store()
    made = {}
    plan = [("d0", {"dropout": 0.0, "lr": 0.001}, [0.700, 0.708, 0.695, 0.703]),
            ("d5", {"dropout": 0.5, "lr": 0.001}, [0.722, 0.727, 0.716, 0.725]),
            ("d0-fast", {"dropout": 0.0, "lr": 0.01}, [0.650, 0.660])]
    for config, params, tests in plan:
        for seed, acc in enumerate(tests):
            run = store.create_run("e", {Tag.CONFIG_KEY: config, Tag.TRIAL_KEY: f"{config}-{seed}"})
            run.log_params({**params, "seed": seed, "arch.name": "tf_cnn"})
            run.log_metrics({"test_acc": acc, "val_acc_best": acc})
            run.end("FINISHED")
            made.setdefault(config, []).append(run.id)
    return made


def test_compare_two_configurations_by_their_values(made_up, cli):
    code, out, err = cli("compare", "dropout=0 lr=0.001", "dropout=0.5", "--experiment", "e")
    assert code == 0, err
    text = " ".join(out.split())
    assert re.search(r"verdict \(test accuracy\): dropout=0.5 is better than dropout=0 lr=0.001 by 2\.1 points "
                     r"\(\+[\d.]+ to \+[\d.]+, p[=<][\d.e-]+, 4 seeds each, paired by seed\)\.", text), text
    assert re.search(r"seeds │ 4 │ 4", text)
    # the pair that differs only in the keys given, even though dropout=0 alone matches two configurations
    code, out, err = cli("compare", "dropout=0", "dropout=0.5", "--experiment", "e")
    assert code == 0, err
    assert "better than dropout=0 by 2.1 points" in " ".join(out.split())


def test_compare_runs_counts_their_configurations_seeds(made_up, cli):
    first, other = made_up["d0"][0], made_up["d0-fast"][1]
    code, out, err = cli("compare", first, other, "--experiment", "e")
    assert code == 0, err
    text = " ".join(out.split())
    assert f"{other}'s configuration is worse than {first}'s configuration by 4.6 points" in text
    assert "4 and 2 seeds" in text


def test_compare_refuses_what_it_cannot_tell_apart(made_up, cli):
    cases = [(["dropout=0", "lr=0.001"], "'dropout=0' matches 2 configurations"),
             (["dropout=0.5", "dropout=0.3"], "No FINISHED run has dropout=0.3"),
             (["dropout=0.5", "dropuot=0"], "no FINISHED run here has the config key 'dropuot'"),
             (["dropout=0.5", "dropout=0 lr"], "'lr' is not one"),
             (["dropout=0.5", "dropout=0.5 seed=0"], "a second time")]
    for args, message in cases:
        code, out, err = cli("compare", *args, "--experiment", "e")
        assert code == 2 and message in " ".join(err.split()) and "Traceback" not in err, (args, err)
    code, _, err = cli("compare", "dropout=0.5", "dropout=0", "--confidence", "95", "--experiment", "e")
    assert code == 2 and "--confidence 95" in err


# ---------------------------------------------------------------- --repeats auto


def _rounds(spec, planned, value_of):
    """Run AutoRepeats' rounds on made-up trials: each trial FINISHED with value_of(trial params, seed)."""
    from cnnlab.record import Record, Tag
    from cnnlab.sweeps.repeats import AutoRepeats

    def finished(t, i):
        seed = int(t.params["seed"])
        acc = value_of(t.params, seed)
        tags = {Tag.SWEEP: "s", Tag.TRIAL: t.id, Tag.TRIAL_KEY: t.key, Tag.CONFIG_KEY: t.group,
                Tag.SWEPT: json.dumps(t.params)}
        return Record(f"r{i}", f"s/{t.id}", t.id, "synthetic", "1", "FINISHED", i, {"seed": seed},
                      {"val_acc_best": acc, "test_acc": acc}, tags)

    children = [finished(t, i) for i, t in enumerate(planned)]
    auto, rounds = AutoRepeats(spec, planned), []
    while True:
        more = auto.next_round(children)
        if not more:
            return auto, children, rounds
        rounds.append(more)
        children += [finished(t, len(children)) for t in more]


def _spec(space, max_repeats):
    from cnnlab.sweeps import expand, load_spec

    spec = load_spec(["data=synthetic", *space], repeats=2, max_repeats=max_repeats)
    return spec, expand(spec)


def _noise(seed, config):
    return random.Random(f"{seed}-{config}").gauss(0, 0.006)


def test_repeats_auto_stops_once_a_planted_difference_is_separated():
    """lr=0.003 is 2 points better than lr=0.001 (seed noise 0.6 points): more seeds until that is shown (p 0.45 at
    2 seeds, 0.17 at 3, 0.05 at 4, 0.026 at 5)."""
    spec, planned = _spec(["lr=0.001,0.003"], max_repeats=8)
    assert [t.params["seed"] for t in planned] == ["0", "1", "0", "1"]
    auto, children, rounds = _rounds(spec, planned, lambda p, s: 0.70 + (0.02 if p["lr"] == "0.003" else 0)
                                     + _noise(s, p["lr"]))
    assert rounds, "two seeds do not show a 1.5-point difference under this noise"
    for more in rounds:  # each round: one more seed for each configuration still in the running, a new ID each
        assert sorted(t.params["lr"] for t in more) == ["0.001", "0.003"]
    ids = [r.trial for r in children]
    assert len(set(ids)) == len(ids) and ids[:4] == ["T0", "T1", "T2", "T3"] and ids[4] == "T4"
    assert "separated from the runner-up at 95%" in auto.outcome and "lr=0.001 is worse than lr=0.003" in auto.outcome
    seeds = sorted(int(r.params["seed"]) for r in children if json.loads(r.tags["cnnlab.swept"])["lr"] == "0.003")
    assert seeds == [0, 1, 2, 3, 4] and len(rounds) == 3


def test_repeats_auto_with_no_difference_stops_at_the_cap_and_says_so():
    spec, planned = _spec(["lr=0.001,0.003"], max_repeats=5)
    auto, children, rounds = _rounds(spec, planned, lambda p, s: 0.70 + _noise(s, p["lr"]))
    assert len(rounds) == 3 and len(children) == 10  # 2 seeds each, then 3 rounds to 5 each
    assert "stopped at the cap of 5 seeds" in auto.outcome and "no difference shown" in auto.outcome


def test_repeats_auto_leaves_a_clearly_worse_configuration_behind():
    """Three configurations: one far below is not given more seeds; the two close ones are."""
    spec, planned = _spec(["lr=0.001,0.002,0.003"], max_repeats=4)
    value = {"0.001": 0.50, "0.002": 0.70, "0.003": 0.701}
    auto, children, rounds = _rounds(spec, planned, lambda p, s: value[p["lr"]] + _noise(s, p["lr"]))
    assert rounds and all(sorted(t.params["lr"] for t in more) == ["0.002", "0.003"] for more in rounds)


def test_repeats_auto_on_the_command_line(cli):
    """A real sweep on tiny synthetic data: a learning rate that learns against one that cannot; the summary marks
    the standings and says how auto ended."""
    code, out, err = cli("sweep", "data=synthetic", "data.n_train=600", "data.n_test=200", "batch_size=50",
                         "epochs=4", "lr=0.003,1e-7", "--repeats", "auto", "--max-repeats", "3", "-q")
    assert code == 0, err
    text = " ".join(out.split())
    assert "repeats auto: the best is separated from the runner-up at 95%" in text, text
    assert re.search(r"│ lr=1e-07 │ [23] │ .* │ below \(p", text) and re.search(r"│ lr=0.003 │ [23] │ .* │ best │", text)
    for args, message in ((["--repeats", "auto", "--max-repeats", "1"], "--max-repeats 1"),
                          (["--max-repeats", "4"], "goes with --repeats auto"),
                          (["--repeats", "many"], "--repeats many"),
                          (["--repeats", "auto", "--strategy", "optuna"], "--repeats applies to grid")):
        code, _, err = cli("sweep", "data=synthetic", "lr=0.003,1e-7", *args, "--dry-run")
        assert code == 2 and message in err and "Traceback" not in err, (args, err)


def test_the_log_marks_standings_and_verdicts_against_the_baseline(made_up, cli, tmp_path):
    """runs and the workbook: VS BEST (d5 best, the others below) and VERDICT against the baseline T0's
    configuration (dropout 0, lr 0.001) on test accuracy."""
    import pandas as pd

    code, out, err = cli("export-log", str(tmp_path / "log.xlsx"), "--experiment", "e")
    assert code == 0, err
    table = pd.read_excel(tmp_path / "log.xlsx", sheet_name="Training log", header=1)
    by_id = {row["ID"]: row for _, row in table.iterrows()}
    d0, d5, fast = made_up["d0"], made_up["d5"], made_up["d0-fast"]
    assert {by_id[i]["VS BEST"] for i in d5} == {"best"}
    assert all(re.fullmatch(r"below \(p[=<][\d.e-]+\)", by_id[i]["VS BEST"]) for i in d0 + fast)
    assert {by_id[i]["VERDICT"] for i in d0} == {"baseline"}
    assert all(re.fullmatch(r"better \+2\.10 \(\+[\d.]+ to \+[\d.]+, p[=<][\d.e-]+\)", by_id[i]["VERDICT"]) for i in d5)
    assert all(by_id[i]["VERDICT"].startswith("worse -4.") for i in fast)
    assert list(by_id[d5[0]][["ACC AVG", "ACC STD", "N"]]) == [pytest.approx(0.7225), pytest.approx(0.00480, abs=1e-4), 4]
    code, out, err = cli("runs", "--experiment", "e")
    assert code == 0, err
    assert "vs best" in out and "vs baseline" in out and "better +2.10" in out


# ---------------------------------------------------------------- reproduction


def test_a_run_records_what_it_takes_to_run_it_again_and_reproduce_says_identical(cli, tmp_path):
    """A tiny run on a real-format data cache: its environment recorded; reproduce gives bit-identical metrics and
    says so, linked both ways. After the cache is replaced by other images, reproduce names the data as what
    differs."""
    from cnnlab import data
    from cnnlab.record import Store, Tag

    from .helpers import make_folder

    data.import_dataset(make_folder(tmp_path / "a", n_train=30, n_test=10, seed=1))
    tiny = ["data=cifar10", "batch_size=30", "epochs=2", "threads=1", "-q"]
    code, out, err = cli("train", *tiny)
    assert code == 0, err
    store = Store()
    first = store.find("T0", ["cifar10"])
    tags = first.tags
    assert len(tags[Tag.DATA_HASH]) == 16 and tags[Tag.THREADS] == "1" and tags[Tag.CPU] and tags[Tag.PYTHON]
    assert tags[Tag.GIT_DIFF_HASH] and tags["cnnlab.torch"]
    frozen = store.download(first.run_id, "repro/requirements.txt").read_text()
    assert "torch==" in frozen and "mlflow==" in frozen

    code, out, err = cli("reproduce", "T0", "-q")
    assert code == 0, err
    assert re.match(r"reproduced T0 as T1: identical \(test_acc [\d.]+, val_acc_best [\d.]+; every epoch's", out), out
    again = Store().find("T1", ["cifar10"])
    assert again.tags[Tag.REPRODUCES] == first.run_id
    assert Store().find("T0", ["cifar10"]).tags[Tag.REPRODUCED_BY] == again.run_id
    assert again.metrics["test_acc"] == first.metrics["test_acc"]

    data.import_dataset(make_folder(tmp_path / "b", n_train=30, n_test=10, seed=2))  # same shape, other images
    code, out, err = cli("reproduce", "T0", "-q")
    assert code == 0, err
    assert "reproduced T0 as T2" in out
    assert re.search(rf"data \(content hash\): {tags[Tag.DATA_HASH]} -> [0-9a-f]{{16}}", out), out
    assert Store().find("T0", ["cifar10"]).tags[Tag.REPRODUCED_BY] == f"{again.run_id} {Store().find('T2', ['cifar10']).run_id}"


def test_reproduce_refuses_what_it_cannot_repeat(cli):
    code, out, err = cli("train", "data=synthetic", "data.n_train=100", "data.n_test=50", "batch_size=50",
                         "budget=6s", "-q")
    assert code == 0, err
    code, _, err = cli("reproduce", "T0", "--experiment", "synthetic")
    assert code == 2 and "budget=6s" in err and "Traceback" not in err
    code, _, err = cli("reproduce", "T7", "--experiment", "synthetic")
    assert code == 2 and "No run 'T7'" in err


def test_compare_from_python(made_up, capsys):
    import cnnlab

    found = cnnlab.compare("dropout=0", "dropout=0.5", experiment="e")
    (v,) = found.verdicts
    assert v.shown and v.better and v.paired and v.diff == pytest.approx(0.021)
    assert "dropout=0.5 is better than dropout=0" in " ".join(capsys.readouterr().out.split())
