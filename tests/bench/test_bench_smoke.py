"""The benchmark scripts run end to end in their tiny --smoke mode (no timing is asserted).

Speed claims come from ``make bench``; these tests only keep the scripts from rotting: each one
runs against a tiny bundle, writes its JSON to a temporary folder (never bench/results/) and the
JSON has the shape bench/report.py reads. A few pure helpers are tested directly.
"""

from __future__ import annotations

import json
import shutil

import pytest

from bench import (
    batch_scoring,
    common,
    evidence,
    profile_request,
    recycling,
    report,
    serving,
    training,
)


# ---- the scripts, end to end --------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("loadgen", ["python", "wrk"])
def test_serving_smoke(tiny_bundle_root, fresh_bundle_root, tmp_path, loadgen):
    if loadgen == "wrk" and shutil.which("wrk") is None:
        pytest.skip("wrk is not installed")
    args = ["--smoke", "--model-root", str(tiny_bundle_root), "--results", str(tmp_path)]
    # a second bundle stands in for the production-sized one (this one has no compiled trees)
    args += ["--production-root", str(fresh_bundle_root)]
    args += ["--loadgen", loadgen, "--batch-size", "20"]
    if loadgen == "python":
        args += ["--duration", "0.5"]
    assert serving.main(args) == 0

    result = json.loads((tmp_path / "serving.json").read_text())
    assert result["settings"]["load_generator"] == loadgen
    (config,) = result["configurations"]
    assert config["workers"] == 1
    every = {(r["server"], r["name"]): r for r in config["scenarios"]}
    assert every[("bare", "bare floor")]["requests"] > 0
    for server in ("demo", "production"):
        rows = {name: r for (s, name), r in every.items() if s == server}
        assert {"floor", "predict-segment", "recommend", "recommend explain=true"} <= set(rows)
        for row in rows.values():
            assert row["requests"] > 0, row["name"]
            assert row["errors"] == 0, row["name"]
        assert rows["recommend batch of 20"]["customers_per_request"] == 20
        assert rows["recommend batch of 20, compact"]["customers_per_request"] == 20
        assert rows["recommend"]["ratio_to_floor"] > 0
        assert rows["recommend"]["ratio_to_bare"] > 0
        # one entry per worker process seen; recycling is on (as in production), so a fast load
        # generator may retire the worker mid-run and its replacement is measured too
        rss = config["worker_rss_mb"][server]
        assert rss and all(mb > 0 for mb in rss), rss
    names = {t["name"] for t in result["targets"]}
    assert "demo model: batch recommend customers/s per worker" in names
    assert "production model: recommend rps / bare floor rps" in names
    assert (
        f"production model: recommend batch of {serving.BATCH_SIZE}, compact customers/s per worker"
        in names
    )


@pytest.mark.slow
def test_targeting_server_smoke(tiny_bundle_root, redis_url, tmp_path):
    """--server: one gunicorn per scenario answers through the load generator, none errs, and
    the requests name many customers (caps count one customer per request under commit)."""
    import redis

    from bench import targeting

    seen: list[int] = []
    clean = targeting._clean

    def counting_clean(url: str, prefix: str) -> None:
        client = redis.Redis.from_url(url, socket_timeout=2)
        keys = [k.decode() for k in client.scan_iter(match=f"{prefix}:*", count=1000)]
        seen.append(len({k.split(":c:")[1].split(":")[0] for k in keys if ":c:" in k}))
        clean(url, prefix)

    args = ["--server", "--model-root", str(tiny_bundle_root), "--results", str(tmp_path)]
    args += ["--rounds", "1", "--seconds", "0.5", "--warmup", "0.2", "--pool", "60"]
    args += ["--loadgen", "python", "--redis-url", redis_url]
    targeting._clean = counting_clean
    try:
        assert targeting.main(args) == 0
    finally:
        targeting._clean = clean

    result = json.loads((tmp_path / "targeting_server.json").read_text())
    rows = {r["scenario"]: r for r in result["scenarios"]}
    assert set(rows) == set(targeting.SERVER_SCENARIOS)
    for row in rows.values():
        assert row["requests"] > 0 and row["errors"] == 0, row
        assert row["ratio_to_base"] > 0, row
    assert rows["base"]["ratio_to_base"] == 1.0
    assert result["settings"]["distinct_customers"] == 60
    # commit counted sends for many customers (those not held out), all keys deleted afterwards
    assert seen and seen[0] > 30, seen
    assert [t["issue"] for t in result["targets"]] == ["9", "9"]
    assert "rules+caps-every-read" in targeting.server_markdown(result)


@pytest.mark.slow
def test_recycling_smoke(tiny_bundle_root, tmp_path):
    """Steady, recycling and SIGHUP roll-outs with one worker: every mode answers, none errs."""
    if shutil.which("wrk") is None:
        pytest.skip("wrk is not installed")
    args = ["--smoke", "--model-root", str(tiny_bundle_root), "--results", str(tmp_path)]
    assert recycling.main(args) == 0
    result = json.loads((tmp_path / "recycling.json").read_text())
    rows = {r["mode"]: r for r in result["rows"]}
    assert set(rows) == {"steady", "recycling", "sighup"}
    for row in rows.values():
        assert row["rps"] > 0 and row["errors"] == 0, row
    assert rows["steady"]["events_per_run"] == [0]


def test_recycle_cost_smoke(tiny_bundle_root):
    """Each step of a forked worker's life is reported (in a child process: the benchmark
    preloads the bundle as the master does, which must not leak into other tests)."""
    import subprocess
    import sys

    args = ["--model-root", str(tiny_bundle_root), "--trials", "1", "--requests", "20"]
    done = subprocess.run(
        [sys.executable, "-m", "bench.recycle_cost", *args],
        cwd=common.ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    steps = [
        line.split("|")[1].strip() for line in done.stdout.splitlines() if line.startswith("| ")
    ]
    assert steps[2:] == [
        "fork (the master)",
        "child until create_app",
        "create_app (warm-up included)",
        "request 1",
        "requests 2-10",
        "requests 11-20",
        "exit (os._exit)",
    ]


@pytest.mark.slow
def test_batch_scoring_smoke(tiny_bundle_root, tmp_path):
    args = ["--smoke", "--customers", "500", "--model-root", str(tiny_bundle_root)]
    assert batch_scoring.main([*args, "--results", str(tmp_path)]) == 0

    result = json.loads((tmp_path / "batch_scoring.json").read_text())
    assert result["customers"] == 500
    # the tiny bundle has compiled trees: both thread counts, then LightGBM's C API beside them
    assert [(r["path"], r["threads"]) for r in result["core"]["results"]] == [
        ("compiled trees", 1),
        ("compiled trees", 2),
        ("LightGBM C API", 1),
    ]
    assert result["core"]["pairs_scored"] == 500 * result["core"]["campaigns"]
    if common.training_available():
        assert result["cli"]["customers_per_s"] > 0
    else:
        assert result["cli"] is None


@pytest.mark.slow
def test_profile_request_smoke(tiny_bundle_root, tmp_path):
    args = ["--smoke", "--model-root", str(tiny_bundle_root), "--results", str(tmp_path)]
    assert profile_request.main(args) == 0

    result = json.loads((tmp_path / "profile_request.json").read_text())
    names = [e["name"] for e in result["endpoints"]]
    assert names[:4] == ["floor", "predict-segment", "recommend", "recommend explain=true"]
    assert names[4].startswith("recommend batch of")
    assert names[5].endswith(", compact")
    recommend = result["endpoints"][2]
    assert recommend["by_module"], "no time was attributed inside the app"
    assert (tmp_path / "profile_recommend.txt").read_text().strip()


@pytest.mark.slow
def test_training_smoke(tmp_path):
    if not common.training_available():
        pytest.skip("the training CLI is not there yet")
    assert training.main(["--smoke", "--results", str(tmp_path)]) == 0

    result = json.loads((tmp_path / "training.json").read_text())
    (size,) = result["sizes"]
    assert size["customers"] == training.MODES["smoke"]["sizes"][0]
    assert size["stages_s"], "the manifest recorded no stage timings"
    assert size["max_rss_mb"] > 0
    # the 1,000,000-customer targets are reported as not measured, not as met
    assert all(t["met"] is None for t in result["targets"])


@pytest.mark.slow
def test_evidence_smoke(tmp_path):
    assert evidence.main(["--smoke", "--results", str(tmp_path)]) == 0

    result = json.loads((tmp_path / "evidence.json").read_text())
    (size,) = result["sizes"]
    assert size["customers"] == evidence.MODES["smoke"]["sizes"][0]
    assert size["bare_wall_s"] > 0 and size["full_wall_s"] > 0
    # the full run has the comparison and report stages, the bare run has neither
    (full,) = size["runs"]["full"]
    (bare,) = size["runs"]["bare"]
    assert {"comparison", "report"} <= set(full["stages_s"])
    assert "report" not in bare["stages_s"]
    # the 100,000-customer target is not claimed from the smoke size
    assert all(t["met"] is None for t in result["targets"])


# ---- pure helpers -------------------------------------------------------------------------------
def test_ratio_to_floor_is_taken_within_each_round():
    scenarios = [
        serving.Scenario("bare floor", "/bench/floor", b"{}", 1, None, serving.BARE),
        serving.Scenario("floor", "/bench/floor", b"{}", 1, None),
        serving.Scenario("recommend", "/recommend", b"{}", 1, "floor"),
    ]
    per_round = {
        # the machine got twice as slow in round 1: the per-round ratios stay 0.5 and 0.4
        "bare/bare floor": [{"round": 0, "rps": 1250.0}, {"round": 1, "rps": 625.0}],
        "demo/floor": [{"round": 0, "rps": 1000.0}, {"round": 1, "rps": 500.0}],
        "demo/recommend": [{"round": 0, "rps": 500.0}, {"round": 1, "rps": 250.0}],
    }
    for runs in per_round.values():
        for r in runs:
            r.update(p50_ms=1.0, p99_ms=2.0, errors=0, requests=10)
    rows = {r["name"]: r for r in serving.summarise(scenarios, per_round)}
    assert rows["recommend"]["ratio_to_floor"] == pytest.approx(0.5)
    assert rows["recommend"]["ratio_to_bare"] == pytest.approx(0.4)
    assert rows["floor"]["ratio_to_bare"] == pytest.approx(0.8)
    assert rows["floor"]["ratio_to_floor"] is None


def test_ratios_to_the_bare_floor_are_claimed_unless_it_measured_the_machine():
    def targets(bare_rps: float) -> dict[str, float | None]:
        config = {
            "workers": 1,
            "scenarios": [
                {"server": serving.BARE, "name": "bare floor", "rps": bare_rps},
                {"server": "production", "name": "floor", "rps": 1000.0, "ratio_to_bare": 1.2},
            ],
        }
        return {t["name"]: t["measured"] for t in serving.evaluate_targets(config)}

    name = "production model: floor rps / bare floor rps"
    # our floor may beat the bare one (kept-alive connections): still a measurement
    assert targets(bare_rps=800.0)[name] == pytest.approx(1.2)
    # a bare floor under half of ours measured an overloaded machine: no ratio claimed
    assert targets(bare_rps=400.0)[name] is None


def test_training_targets_are_not_claimed_without_the_million_run():
    small = [{"customers": 10_000, "wall_s": 1.0, "max_rss_mb": 100.0}]
    assert all(t["met"] is None for t in training.evaluate_targets(small))
    big = [{"customers": 1_000_000, "wall_s": 120.0, "max_rss_mb": 1000.0}]
    wall, peak = training.evaluate_targets(big)
    assert wall["met"] is False and peak["met"] is True


def test_report_keeps_the_hand_written_text(tmp_path):
    out = tmp_path / "RESULTS.md"
    out.write_text(
        f"# Results\n\nnotes before\n\n{report.START}\nold figures\n{report.END}\nafter\n"
    )
    report.update(out, tmp_path / "no-results")
    text = out.read_text()
    assert "notes before" in text and text.endswith(f"{report.END}\nafter\n")
    assert "old figures" not in text
    assert "no results yet" in text


def test_run_child_measures_its_own_child():
    run = common.run_child(
        [common.PYTHON, "-c", "b = bytearray(80 * 1024 * 1024); print('done')"]
    ).check("allocating")
    assert run.stdout.strip() == "done"
    assert run.max_rss_mb >= 80


def test_feature_load_smoke(tmp_path, redis_url):
    from bench.feature_load import main

    args = ["--customers", "3000", "--rounds", "1", "--redis-url", redis_url]
    assert main([*args, "--results", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "feature_load.json").read_text())
    assert set(result["customers_per_second"]) == {"loader", "redis-py", "floor"}
    assert all(v > 0 for v in result["customers_per_second"].values())


@pytest.mark.slow
def test_dask_training_smoke(tmp_path):
    from bench import dask_training

    args = ["--smoke", "--workers", "1", "--results", str(tmp_path)]
    assert dask_training.main(args) == 0
    result = json.loads((tmp_path / "dask_training.json").read_text())
    (run,) = result["runs"]
    assert run["workers"] == 1 and run["k"] >= 2
    assert run["train_peak_tree_mb"] > 0 and run["score_wall_s"] > 0
    assert set(run["stages_s"]) >= {"prepare", "segmentation", "response_model"}
    assert result["generation"]["customers"] == 20_000


def test_targeting_targets_are_ratios_to_the_code_before_the_feature():
    from bench import targeting

    names = ["base", "head", "head+rules", "head+rules+caps"]
    result = {
        "median_requests_per_s": dict.fromkeys(names, 100.0),
        "median_ratio_to_base": {
            "base": 1.0,
            "head": 1.0,
            "head+rules": 0.95,
            "head+rules+caps": 0.6,
        },
        "median_ratio_to_head": dict.fromkeys(names, 1.0),
        "median_cpu_us": dict.fromkeys(names, 300.0),
        "median_wall_us": dict.fromkeys(names, 300.0),
    }
    got = {t["measured"]: t["met"] for t in targeting.targets(result)}
    assert got == {0.95: True, 0.6: False}
    # an older JSON without round trips still renders
    assert "| head+rules+caps | 100 | 0.600 |" in targeting.markdown(result)


def test_report_shows_a_missed_goal_with_the_digits_that_show_the_miss():
    """5.005 against "<= 5" is shown as 5.005, not 5.00 (which reads as met)."""
    missed = {"target": "<= 5", "measured": 5.005, "met": False}
    assert report._digits_showing_miss(missed, 2) == 3
    assert report._digits_showing_miss({**missed, "measured": 5.2}, 2) == 2
    assert report._digits_showing_miss({**missed, "met": True, "measured": 4.999}, 2) == 2
    assert (
        report._digits_showing_miss(
            {"target": ">= 150,000", "measured": 149_999.6, "met": False}, 0
        )
        == 1
    )


def test_targeting_rules_bundles_keep_the_compiled_trees(tiny_bundle_root, tmp_path):
    """The rules bundles are served by the same path as the bundle they copy: compiled trees
    where it has them (else the rules' cost would include LightGBM's C API against base's
    compiled trees)."""
    from bench.targeting import rules_bundles
    from scoring.bundle import load_current

    source = load_current(tiny_bundle_root)
    assert source.compiled_status.compiled, source.compiled_status
    for name, root in rules_bundles(tiny_bundle_root, tmp_path).items():
        bundle = load_current(root)
        assert bundle.compiled_status == source.compiled_status, name
        assert all(c.holdout_share > 0 for c in bundle.campaigns), name


def test_targeting_help_names_every_mode(capsys):
    # --server and --callgrind are picked before the default mode's parser runs: its --help
    # must still name them
    from bench import targeting

    with pytest.raises(SystemExit) as stop:
        targeting.main(["--help"])
    assert stop.value.code == 0
    text = capsys.readouterr().out
    for mode in targeting.MODES_HELP:
        assert mode in text


def test_targeting_mixed_scenario_commits_one_request_in_twenty_over_its_own_ids():
    from bench import targeting

    reqs = [{"customer_id": f"bench-{i}", "total_spend": 1.0} for i in range(100)]
    mixed = [json.loads(b) for b in targeting.scenario_bodies("mixed", reqs, 10)]
    assert len(mixed) == 100
    assert [i for i, b in enumerate(mixed) if b.get("commit")] == list(range(0, 100, 20))
    assert all(b["customer_id"] == f"mixed-{i}" for i, b in enumerate(mixed))
    # the others keep theirs: base names the pool's ids, commit always commits, repeat is short
    assert [json.loads(b)["customer_id"] for b in targeting.scenario_bodies("base", reqs, 10)] == [
        r["customer_id"] for r in reqs
    ]
    assert all(json.loads(b)["commit"] for b in targeting.scenario_bodies("commit", reqs, 10))
    assert len(targeting.scenario_bodies("rules+caps-repeat", reqs, 10)) == 10
