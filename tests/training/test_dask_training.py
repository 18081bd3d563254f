"""Training on a real Dask LocalCluster (2 worker processes, 1 thread each) against one process.

On the same partitioned data the Dask bundle and the single-process bundle agree: the same k,
adjusted Rand index >= 0.95 between their assignments, response AUC within 0.01 on the same
independent customers; bad tables are refused with the single-process path's own messages.
The pieces that replace whole-table fits (moments -> scaler and PCA, combined summaries,
contingency ARI, the early-stopping rule) are checked against scikit-learn and pandas directly.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.decomposition import PCA
from sklearn.metrics import adjusted_rand_score, roc_auc_score
from sklearn.preprocessing import StandardScaler

from scoring.bundle import load_current, verify
from scoring.engine import ScoringEngine
from training.cli import main
from training.config import load_config
from training.engines.dask import (
    best_round,
    connect,
    kmeans_with_centers,
    lloyd,
    merged_percentile,
    pca_from_moments,
    scaler_from_moments,
    score_dataset,
)
from training.engines.dask import train as train_on_dask
from training.engines.local import score_table
from training.generate import write_demo
from training.partitioned import (
    Moments,
    adjusted_rand_from_contingency,
    combine,
    combine_moments,
    summarize,
)
from training.prepare import prepare
from training.validate import TableError, skewness

ROOT = Path(__file__).resolve().parents[2]
DEMO_CONFIG = ROOT / "examples" / "demo_dask.toml"
PARTS = 4


def split_demo(source: Path, target: Path, parts: int = PARTS) -> Path:
    """The demo files as partitioned datasets: <name>.parquet/ folders of ``parts`` files."""
    target.mkdir(parents=True, exist_ok=True)
    shutil.copy(source / "campaigns.json", target / "campaigns.json")
    for name in ("customers", "responses"):
        frame = pd.read_parquet(source / f"{name}.parquet")
        folder = target / f"{name}.parquet"
        folder.mkdir()
        size = -(-len(frame) // parts)
        for i in range(parts):
            frame.iloc[i * size : (i + 1) * size].to_parquet(folder / f"part-{i}.parquet")
    return target


@pytest.fixture(scope="module")
def cluster():
    """A LocalCluster of two single-threaded worker processes."""
    with connect(workers=2) as (client, info):
        yield client, info


@pytest.fixture(scope="module")
def trained(tmp_path_factory, cluster):
    """6,000 demo customers trained by both engines (Dask through the CLI on the running
    scheduler), and 4,000 independent customers to compare the two bundles on."""
    _, info = cluster
    base = tmp_path_factory.mktemp("dask-training")
    write_demo(base / "one", n_customers=6000, seed=3)
    split_demo(base / "one", base / "parts")
    write_demo(base / "fresh", n_customers=4000, seed=77)
    args = ["-q", "train", "--config", str(DEMO_CONFIG)]
    dask_args = [*args, "--data-dir", str(base / "parts"), "--output", str(base / "dask")]
    assert main([*dask_args, "--engine", "dask", "--scheduler", info.scheduler]) == 0
    assert main([*args, "--data-dir", str(base / "one"), "--output", str(base / "local")]) == 0
    return load_current(base / "dask"), load_current(base / "local"), base


def _fresh_auc(bundle, base: Path) -> float:
    customers = pd.read_parquet(base / "fresh" / "customers.parquet")
    responses = pd.read_parquet(base / "fresh" / "responses.parquet")
    engine = ScoringEngine(bundle)
    ranking = engine.rank(engine.batch_from_frame(customers))
    row = pd.Index(customers["customer_id"]).get_indexer(responses["customer_id"])
    col = pd.Index(engine.campaign_ids).get_indexer(responses["campaign_id"])
    return float(roc_auc_score(responses["responded"], ranking.probability[row, col]))


def test_dask_and_local_bundles_agree(trained):
    on_dask, local, base = trained
    assert on_dask.n_segments == local.n_segments == 5
    customers = pd.read_parquet(base / "one" / "customers.parquet")
    labels = [
        ScoringEngine(b).assign(ScoringEngine(b).batch_from_frame(customers)).segment
        for b in (on_dask, local)
    ]
    assert adjusted_rand_score(*labels) >= 0.95
    # the same independent customers for both models (their own held-out sets differ)
    assert abs(_fresh_auc(on_dask, base) - _fresh_auc(local, base)) <= 0.01
    assert on_dask.schema.log_features == local.schema.log_features
    assert on_dask.manifest["metrics"]["segmentation"]["truth_ari"] >= 0.95


def test_the_dask_bundle_is_the_same_format_and_says_how_it_was_made(trained):
    on_dask, local, base = trained
    verify((base / "dask" / "current").resolve())
    # the keys the service and the report read (optional extras of the local path, such as
    # an algorithm comparison or a compiled model, may be absent)
    core = {"name", "data_fingerprint", "config", "k_selection", "stability", "metrics"}
    core |= {"warnings", "timings", "peak_rss_mb", "ranking", "pool", "feature_distribution"}
    assert core <= set(local.manifest) and core <= set(on_dask.manifest)
    engine = on_dask.manifest["engine"]
    assert engine["name"] == "dask" and engine["partitions"] == PARTS
    assert engine["cluster"]["workers"] == 2 and engine["approximations"]
    refused = [name for name, how in engine["features"].items() if how.startswith("refused")]
    assert any("uplift.enabled" in name for name in refused)
    assert any("select_smallest" in name for name in refused)
    # as in the local manifest, written during export: the stages before it
    for stage in ("prepare", "segmentation", "naming", "response_model"):
        assert on_dask.manifest["timings"][stage] >= 0
        assert engine["workers_peak_rss_mb"][stage] > 0
    assert on_dask.manifest["data_fingerprint"]["rows"] == 6000
    assert on_dask.manifest["metrics"]["response_model"]["params"]["engine"] == "lightgbm.dask"
    # the files the service reads are plain scikit-learn / LightGBM objects
    assert type(on_dask.kmeans) is type(local.kmeans)
    assert type(on_dask.pca) is type(local.pca)
    # the features the local engine offers run here too: compiled trees (when the compiler
    # is installed, as for the local bundle) and the HTML report next to the Markdown one
    assert (on_dask.compiled_status is None) == (local.compiled_status is None)
    if local.compiled_status is not None:
        assert on_dask.compiled_status.compiled == local.compiled_status.compiled
    assert list((base / "dask" / "reports").glob("*.html"))
    assert list((base / "dask" / "reports").glob("*.md"))
    assert on_dask.manifest["metrics"]["uplift_skipped"].startswith("disabled by configuration")


def test_an_uncapped_response_sample_joins_on_the_cluster_with_the_same_result(
    trained, cluster, tmp_path
):
    """max_train_rows = 0: the duplicate collapse and the join run as shuffles on the cluster
    instead of on the client; same rows, so the same model quality and response rates."""
    client, info = cluster
    on_dask, _, base = trained
    text = DEMO_CONFIG.read_text(encoding="utf-8")
    text = text.replace("seed = 42\n# the size", "seed = 42\nmax_train_rows = 0\n# the size")
    config_file = tmp_path / "c.toml"
    config_file.write_text(text, encoding="utf-8")
    overrides = {"data_dir": str(base / "parts"), "output": str(tmp_path / "o")}
    result = train_on_dask(load_config(config_file, overrides), client, info)
    ours = result.bundle.manifest["metrics"]["response_model"]
    theirs = on_dask.manifest["metrics"]["response_model"]
    assert result.bundle.manifest["config"]["response_model"]["max_train_rows"] == 0
    assert (ours["n_train_rows"], ours["n_valid_rows"]) == (
        theirs["n_train_rows"],
        theirs["n_valid_rows"],
    )
    assert abs(ours["auc"] - theirs["auc"]) <= 0.01
    rates = [p["response_rate"] for p in result.bundle.profiles]
    assert rates == [p["response_rate"] for p in on_dask.profiles]


def test_a_bundle_with_compiled_trees_scores_on_the_cluster(trained, cluster, tmp_path):
    """The loaded native forest stays on this machine; workers score through LightGBM, which
    the compiled trees match (to scoring.compiled_trees.TOLERANCE)."""
    client, _ = cluster
    on_dask, _, base = trained
    frame = pd.read_parquet(base / "fresh" / "customers.parquet")
    parts = tmp_path / "parts"
    parts.mkdir()
    for i in range(3):
        frame.iloc[i * 1000 : (i + 1) * 1000].to_parquet(parts / f"p{i}.parquet", index=False)
    result = score_dataset(client, on_dask, parts, tmp_path / "out", show_progress=False)
    assert result.rows == 3000
    scored = pd.concat(
        [pd.read_parquet(p) for p in sorted((tmp_path / "out").iterdir())], ignore_index=True
    )
    in_one = score_table(on_dask, frame.iloc[:3000], batch_size=1000)
    pd.testing.assert_frame_equal(scored, in_one, check_exact=False, rtol=0, atol=1e-9)


@pytest.mark.parametrize(
    ("section", "key", "value"),
    [("uplift", "enabled", "true"), ("response_model", "select_smallest", "true")],
)
def test_features_the_engine_lacks_are_refused_before_fitting(
    section, key, value, trained, cluster, tmp_path
):
    client, info = cluster
    _, _, base = trained
    text = DEMO_CONFIG.read_text(encoding="utf-8")
    config_file = tmp_path / "c.toml"
    if section == "uplift":
        text = text.replace("\nenabled = false\n", f"\nenabled = {value}\n")
    else:
        text = text.replace("select_smallest = false", f"select_smallest = {value}")
    config_file.write_text(text, encoding="utf-8")
    overrides = {"data_dir": str(base / "parts"), "output": str(tmp_path / "o")}
    with pytest.raises(TableError, match=f"{section}.{key}"):
        train_on_dask(load_config(config_file, overrides), client, info)
    assert not (tmp_path / "o").exists()


BAD_TABLES = {
    "non-numeric": lambda f: _set(
        f.assign(order_count=f["order_count"].astype(str)), 4321, "order_count", "12,5"
    ),
    "negative amount": lambda f: _set(_set(f, 2500, "total_spend", -3.0), 5000, "total_spend", -1),
    "ratio above one": lambda f: _set(f, 4800, "discount_usage", 1.5),
    "infinite": lambda f: _set(f, 3333, "return_rate", np.inf),
    "missing id": lambda f: _set(_set(f, 3100, "customer_id", None), 5900, "customer_id", None),
    "duplicate id": lambda f: _set(f, 5999, "customer_id", f["customer_id"].iloc[10]),
    "constant": lambda f: f.assign(unique_products=3),
    "all missing": lambda f: f.assign(mobile_usage=np.nan),
    "too few rows": lambda f: f.head(8),
}


def _set(frame: pd.DataFrame, row: int, column: str, value) -> pd.DataFrame:
    frame = frame.copy()
    if value is None or isinstance(value, str):
        frame[column] = frame[column].astype(object)
    frame.loc[frame.index[row], column] = value
    return frame


@pytest.mark.parametrize("problem", sorted(BAD_TABLES))
def test_bad_tables_get_the_single_process_message(problem, trained, cluster, tmp_path):
    client, info = cluster
    _, _, base = trained
    customers = BAD_TABLES[problem](pd.read_parquet(base / "one" / "customers.parquet"))
    one, parts = tmp_path / "one", tmp_path / "parts"
    one.mkdir()
    customers.to_parquet(one / "customers.parquet")
    for name in ("responses.parquet", "campaigns.json"):
        shutil.copy(base / "one" / name, one / name)
    split_demo(one, parts)
    local_config = load_config(DEMO_CONFIG, {"data_dir": str(one), "output": str(tmp_path / "o")})
    with pytest.raises(TableError) as local_error:
        prepare(local_config)
    dask_config = load_config(DEMO_CONFIG, {"data_dir": str(parts), "output": str(tmp_path / "o")})
    with pytest.raises(TableError) as dask_error:
        train_on_dask(dask_config, client, info)
    assert str(dask_error.value) == str(local_error.value)
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


# ---- the pieces, without a cluster ------------------------------------------------------------
def _parts(X: np.ndarray, sizes=(7, 300, 1, 692)) -> list[np.ndarray]:
    return np.split(X, np.cumsum(sizes)[:-1])


def test_scaler_and_pca_from_moments_equal_sklearn_fits():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(1000, 5)) @ rng.normal(size=(5, 5)) + [3, -1, 0, 10, 2]
    moments = combine_moments([(len(p), Moments.of(p, cross=True)) for p in _parts(X)])
    scaler = scaler_from_moments(moments)
    reference = StandardScaler().fit(X)
    np.testing.assert_allclose(scaler.mean_, reference.mean_, rtol=1e-12)
    np.testing.assert_allclose(scaler.scale_, reference.scale_, rtol=1e-12)
    config = load_config(DEMO_CONFIG).segmentation
    pca = pca_from_moments(moments, scaler, config)
    Z = reference.transform(X)
    ref_pca = PCA(n_components=pca.n_components_, svd_solver="covariance_eigh").fit(Z)
    np.testing.assert_allclose(pca.explained_variance_, ref_pca.explained_variance_, rtol=1e-9)
    np.testing.assert_allclose(pca.transform(Z), ref_pca.transform(Z), atol=1e-9)


def test_combined_moments_give_the_single_process_skewness_and_log_check():
    rng = np.random.default_rng(1)
    x = rng.lognormal(size=1000)
    x[[5, 600]] = np.nan
    moments = combine_moments([(len(p), Moments.of(p[:, None])) for p in _parts(x)])
    assert moments.skewness(0, True) == pytest.approx(skewness(x), rel=1e-10)
    y = x.copy()
    y[[400, 900]] = -2.0
    moments = combine_moments([(len(p), Moments.of(p[:, None])) for p in _parts(y)])
    with pytest.raises(TableError, match=r"negative value -2 at row 400 \(2 such value\(s\)\)"):
        moments.check_log_values(["y"], ("y",))


def test_summaries_combine_positions_and_counts_across_partitions():
    config = load_config(DEMO_CONFIG)
    frame = pd.DataFrame(
        {c: np.arange(20.0) for c in config.features.numeric}
        | {"customer_id": [f"c{i}" for i in range(20)], "true_segment": "x"}
    )
    frame.loc[13, "total_spend"] = -4.0
    frame.loc[17, "total_spend"] = -1.0
    parts = [
        summarize(frame.iloc[a:b].reset_index(drop=True), config) for a, b in ((0, 12), (12, 20))
    ]
    total = combine(parts)
    spend = total.numeric["total_spend"]
    assert (total.rows, spend.below, spend.first_below.position) == (20, 2, 13)
    assert spend.first_below.customer == "c13"


def test_ari_from_a_contingency_table_equals_sklearn():
    rng = np.random.default_rng(2)
    a, b = rng.integers(0, 4, 500), rng.integers(0, 3, 500)
    b[:300] = a[:300] % 3
    table = pd.crosstab(a, b).to_numpy()
    assert adjusted_rand_from_contingency(table) == pytest.approx(adjusted_rand_score(a, b))


def test_best_round_follows_lightgbm_early_stopping():
    losses = [0.9, 0.8, 0.7, 0.69999, 0.71, 0.72, 0.73, 0.6]
    # 0.69999 is not better by more than min_delta; patience 3 stops before the late 0.6
    assert best_round(losses, patience=3, min_delta=1e-4) == 3
    assert best_round(losses, patience=10, min_delta=1e-4) == 8


def test_lloyd_on_blocks_equals_scikit_learn_from_the_same_start():
    from sklearn.cluster import KMeans

    rng = np.random.default_rng(5)
    X = np.vstack([rng.normal(c, 0.7, size=(400, 2)) for c in ((0, 0), (5, 5), (0, 6))])
    start = X[[0, 400, 800]] + 0.5
    centers, counts, _ = lloyd(_parts(X, sizes=(7, 300, 1, 892)), start, tol=0.0)
    reference = KMeans(n_clusters=3, init=start, n_init=1, tol=0.0).fit(X)
    np.testing.assert_allclose(centers, reference.cluster_centers_, atol=1e-9)
    assert counts.tolist() == np.bincount(reference.labels_).tolist()


def test_merged_percentiles_of_partitions_approximate_the_whole():
    rng = np.random.default_rng(9)
    parts = [rng.lognormal(0, 1, size=n) for n in (5, 2000, 30000, 0, 12000)]
    grid = np.arange(101.0)
    values = [np.percentile(p, grid) if len(p) else np.full(101, np.nan) for p in parts]
    merged = merged_percentile(50.0, [grid] * 5, values, [len(p) for p in parts])
    whole = np.concatenate(parts)
    # within a hundredth of the rows of the exact median
    assert abs(np.mean(whole <= merged) - 0.5) < 0.01
    assert np.isnan(merged_percentile(50.0, [grid], [np.full(101, np.nan)], [0]))


def test_kmeans_with_centers_keeps_the_centres():
    centers = np.array([[0.0, 1.0], [5.0, 5.0], [-3.0, 2.0]])
    kmeans = kmeans_with_centers(centers)
    np.testing.assert_array_equal(kmeans.cluster_centers_, centers)
    assert kmeans.predict(np.array([[4.9, 5.2]])).tolist() == [1]


def test_the_comparison_runs_on_a_sample_drawn_from_the_cluster(trained):
    """The local comparison stage on the Dask engine's fixed sample: the same methods succeed
    or fail, and each partitioning method's silhouette is within 0.05 of the local engine's (two
    different samples of 2,000 of the same 6,000 customers, in PCA spaces equal to rounding).
    The density methods (DBSCAN, HDBSCAN) are left out of the tolerance: their eps and noise
    depend on which 2,000 customers are drawn (0.15 apart between these two samples)."""
    on_dask, local, _ = trained
    ours, theirs = on_dask.manifest["comparison"], local.manifest["comparison"]
    assert ours["sample_rows"] == theirs["sample_rows"] == 2000
    assert [m["method"] for m in ours["methods"]] == [m["method"] for m in theirs["methods"]]
    for a, b in zip(ours["methods"], theirs["methods"], strict=True):
        assert (a["error"] is None) == (b["error"] is None), a["method"]
        density = a["method"] in ("dbscan", "hdbscan")
        if not density and a.get("silhouette") is not None and b.get("silhouette") is not None:
            assert abs(a["silhouette"] - b["silhouette"]) <= 0.05, a["method"]
    assert on_dask.evidence is not None and on_dask.evidence["comparison"] == ours
    assert len(on_dask.evidence["map"]["x"]) == len(local.evidence["map"]["x"]) == 1500
    assert on_dask.manifest["metrics"]["response_model"]["params"]["rounds_trained"] < 500
