"""`aigc compare RUN_A RUN_B [...]`: runs side by side on the images both have held-out predictions for. Runs are
fabricated through the real MLflow client (a real sqlite store, real artifacts): nothing is trained."""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np
import pandas as pd
from mlflow import MlflowClient
from sklearn.metrics import precision_recall_fscore_support

from conftest import artifact_paths, assert_user_error, fabricate_run, right_on, runs

EXPERIMENT = "compare-experiment"
PAGES = ("confusion.png", "per_class.csv", "per_class.html", "mcnemar.csv", "disagreements.csv", "disagreements.html")


def fabricate(kind, ids, labels, probabilities, **kwargs):
    return fabricate_run(kind, ids, labels, probabilities, experiment=EXPERIMENT, registered_model="compared",
                         **kwargs)


def read(uri, run_id, path) -> Path:
    return Path(MlflowClient(uri).download_artifacts(run_id, path))


def page_text(uri, run_id, path) -> str:
    """An HTML page's text as a browser shows it (entities decoded)."""
    return html.unescape(read(uri, run_id, path).read_text())


def right_where(labels, right, classes=4) -> np.ndarray:
    """Confident probabilities that are right where `right` is true and wrong elsewhere."""
    predicted = np.where(right, labels, (labels + 1) % classes)
    return 0.1 / (classes - 1) * (1 - np.eye(classes)[predicted]) + 0.9 * np.eye(classes)[predicted]


def expected_per_class(labels, first, second, classes=4) -> pd.DataFrame:
    """The per-class table computed here, from sklearn, independently of aigc."""
    frame = pd.DataFrame({"class": [str(c) for c in range(classes)]})
    scores = [precision_recall_fscore_support(labels, p.argmax(1), labels=range(classes), zero_division=0)
              for p in (first, second)]
    frame["support"] = scores[0][3]
    for index, name in enumerate(("precision", "recall", "f1")):
        frame[f"{name}_A"], frame[f"{name}_B"] = scores[0][index], scores[1][index]
        frame[f"{name}_difference"] = scores[1][index] - scores[0][index]
    return frame


def test_two_train_runs_on_the_same_validation_split(store, cli):
    ids, labels = [f"img-{n}" for n in range(100)], np.arange(100) % 4
    first = right_where(labels, np.random.default_rng(0).random(100) < 0.6)  # mistakes on both sides of B's
    second = right_on(labels, 85)
    right_a, right_b = first.argmax(1) == labels, second.argmax(1) == labels
    a = fabricate("train", ids, labels, first)
    b = fabricate("train", ids, labels, second, fit="chosen")

    result = cli("compare", a, b)
    assert result.exit_code == 0, result.output
    (run,) = runs(store, "compare")
    run_id = run.info.run_id
    summary, browse = result.output.strip().split("\n")  # one line, then where to browse it
    assert browse.startswith("browse the runs: ")
    assert result.output.startswith(f"compare run {run_id}: accuracy on the images each run shares with A")
    assert f"B (train run {b} (train)) 0.8500 vs A {right_a.mean():.4f} on 100 images" in result.output

    # in the reference's experiment, linked to both runs
    assert run.info.experiment_id == MlflowClient(store).get_experiment_by_name(EXPERIMENT).experiment_id
    assert run.data.tags["aigc.compared_runs"] == f"{a} {b}"
    assert (run.data.tags["aigc.compare.A"], run.data.tags["aigc.compare.B"]) == (a, b)
    assert a in run.data.tags["mlflow.note.content"] and b in run.data.tags["mlflow.note.content"]
    assert sorted(artifact_paths(store, run_id)) == sorted(f"compare/A_vs_B/{page}" for page in PAGES)

    # the numbers, computed here
    metrics = run.data.metrics
    assert metrics["A_vs_B/shared_images"] == 100
    assert np.isclose(metrics["A_vs_B/accuracy_A"], right_a.mean()) and metrics["A_vs_B/accuracy_B"] == 0.85
    assert np.isclose(metrics["A_vs_B/difference"], 0.85 - right_a.mean())
    from scipy.stats import binomtest
    only_a, only_b = int(np.sum(right_a & ~right_b)), int(np.sum(~right_a & right_b))
    assert np.isclose(metrics["A_vs_B/mcnemar_p_value"], binomtest(min(only_a, only_b), only_a + only_b).pvalue)
    mcnemar = pd.read_csv(read(store, run_id, "compare/A_vs_B/mcnemar.csv")).set_index("images")
    assert mcnemar.loc["A right", "B wrong"] == only_a and mcnemar.loc["A wrong", "B right"] == only_b
    assert mcnemar.to_numpy().sum() == 100

    table = pd.read_csv(read(store, run_id, "compare/A_vs_B/per_class.csv"))
    assert list(table.columns) == ["class", "support", "precision_A", "precision_B", "precision_difference",
                                   "recall_A", "recall_B", "recall_difference", "f1_A", "f1_B", "f1_difference"]
    expected = expected_per_class(labels, first, second)
    assert list(table["class"].astype(str)) == list(expected["class"]) and list(table["support"]) == [25] * 4
    assert np.allclose(table.drop(columns=["class"]).to_numpy(), expected.drop(columns=["class"]).to_numpy(),
                       atol=1e-4)

    differ = pd.read_csv(read(store, run_id, "compare/A_vs_B/disagreements.csv"))
    assert sorted(differ["id"]) == sorted(np.array(ids)[first.argmax(1) != second.argmax(1)])
    assert {"A_class", "A_p", "B_class", "B_p", "loser"} <= set(differ.columns)

    # every page says which images it is on
    header = "100 images both have held-out predictions for: those in both run A's scores on the validation split " \
             "(100 images) and run B's on the validation split (100 images) (the epoch was chosen on them"
    per_class = page_text(store, run_id, "compare/A_vs_B/per_class.html")
    gallery = page_text(store, run_id, "compare/A_vs_B/disagreements.html")
    for page in (per_class, gallery):
        assert header in page and a in page and b in page
    assert "differences are B - A" in per_class and "<td class='up'>" in per_class
    assert "run A was wrong, run B right" in gallery and "pass --data DIR to compare" in gallery


def test_a_cv_run_and_a_train_run_are_compared_on_the_validation_images_only(store, cli, dataset_factory):
    labels = np.arange(200) % 4
    val_ids = [f"val-{n}" for n in range(40)]
    pooled = [*(f"train-{n}" for n in range(160)), *val_ids]  # cv.pool_validation: the pool holds validation
    oof = right_on(labels, 200)  # right on every pooled image
    oof[:160] = right_on(labels[:160], 0)  # ... but wrong on every training image: only the 40 may count
    cv_run = fabricate("cv", pooled, labels, oof, rows="out-of-fold", fit="cross-fitted", digest="pool")
    train = fabricate("train", val_ids, labels[160:], right_on(labels[160:], 20), digest="val")

    result = cli("compare", cv_run, train)
    assert result.exit_code == 0, result.output
    assert "0.5000 vs A 1.0000 on 40 images (difference -0.5000" in result.output
    (run,) = runs(store, "compare")
    run_id, metrics = run.info.run_id, run.data.metrics
    assert metrics["A_vs_B/shared_images"] == 40 and metrics["A_vs_B/accuracy_A"] == 1.0
    assert metrics["A_vs_B/accuracy_B"] == 0.5 and metrics["A_vs_B/difference"] == -0.5

    table = pd.read_csv(read(store, run_id, "compare/A_vs_B/per_class.csv"))
    assert table["support"].sum() == 40  # the pooled training images are not in it
    expected = expected_per_class(labels[160:], oof[160:], right_on(labels[160:], 20))
    assert np.allclose(table.drop(columns=["class"]).to_numpy(), expected.drop(columns=["class"]).to_numpy(),
                       atol=1e-4)
    assert pd.read_csv(read(store, run_id, "compare/A_vs_B/mcnemar.csv")).drop(columns="images").to_numpy().sum() == 40
    differ = pd.read_csv(read(store, run_id, "compare/A_vs_B/disagreements.csv"))
    assert len(differ) == 20 and set(differ["id"]) <= set(val_ids) and set(differ["loser"]) == {"B"}

    header = ("40 images both have held-out predictions for: those in both run A's scores on out-of-fold predictions "
              "of 200 pooled images (cross-fitted")
    for page in ("per_class.html", "disagreements.html"):
        text = page_text(store, run_id, f"compare/A_vs_B/{page}")
        assert header in text and "run B's on the validation split (40 images)" in text
    assert "Every number here is on these images" in page_text(store, run_id, "compare/A_vs_B/per_class.html")


def test_more_runs_are_each_compared_with_the_first(store, cli):
    ids, labels = [f"img-{n}" for n in range(40)], np.arange(40) % 4
    a, b, c = (fabricate("train", ids, labels, right_on(labels, count)) for count in (20, 30, 40))
    result = cli("compare", a, f"{b} {c}")  # `mlflow run -P runs="B C"` passes them as one argument
    assert result.exit_code == 0, result.output
    (run,) = runs(store, "compare")
    assert {"A_vs_B/difference", "A_vs_C/difference"} <= set(run.data.metrics)
    assert run.data.metrics["A_vs_C/difference"] == 0.5
    assert "compared with A, the reference" in run.data.tags["mlflow.note.content"]
    assert len(artifact_paths(store, run.info.run_id)) == 2 * len(PAGES)
    page = page_text(store, run.info.run_id, "compare/A_vs_C/per_class.html")
    assert "40 images both have held-out predictions for: the validation split (40 images)." in page


def test_thumbnails_and_class_names_come_from_data(store, cli, dataset_factory):
    data = dataset_factory("gic", classes=4, per_class=12, size=16)
    rows = pd.read_csv(data / "val.csv")
    ids, labels = rows.iloc[:, 0].astype(str).tolist(), rows.iloc[:, 1].to_numpy()
    a = fabricate("train", ids, labels, right_on(labels, 0))
    b = fabricate("train", ids, labels, right_on(labels, len(ids)))
    result = cli("compare", a, b, "--data", data)
    assert result.exit_code == 0, result.output
    gallery = read(store, runs(store, "compare")[0].info.run_id, "compare/A_vs_B/disagreements.html").read_text()
    assert gallery.count("<img src='data:image/png;base64,") == min(60, len(ids)) and "pass --data" not in gallery


def test_refusals_name_the_run_and_start_no_run(store, cli, tmp_path):
    ids, labels = [f"img-{n}" for n in range(40)], np.arange(40) % 4
    a = fabricate("train", ids, labels, right_on(labels, 20))
    elsewhere = fabricate("train", [f"other-{n}" for n in range(40)], labels, right_on(labels, 20))
    old = fabricate("ensemble", ids, labels, right_on(labels, 30), source=False)
    same = fabricate("train", ids, labels, right_on(labels, 30))
    relabelled = fabricate("train", ids, (labels + 1) % 4, right_on(labels, 30))
    five = fabricate("train", ids, labels, np.hstack([right_on(labels, 30), np.zeros((40, 1))]))
    import mlflow

    with mlflow.start_run() as bare:  # a run that logged no held-out probabilities (e.g. preprocess)
        pass
    missing = "0123456789abcdef0123456789abcdef"

    assert_user_error(cli("compare", a), "at least two run ids")
    assert_user_error(cli("compare", a, a), f"run {a} is named more than once")
    assert_user_error(cli("compare", a, missing), f"run {missing} not found")
    assert_user_error(cli("compare", a, bare.info.run_id), f"run {bare.info.run_id}", "no held-out probabilities")
    assert_user_error(cli("compare", a, old), f"run {old}'s held-out probabilities do not say which images",
                      "in-sample")
    assert_user_error(cli("compare", a, elsewhere), f"runs {a} (A) and {elsewhere} (B) share no images",
                      "the validation split (40 images)")
    assert_user_error(cli("compare", a, relabelled), f"runs {a} (A) and {relabelled} (B) were scored against "
                      "different labels for 40 images")
    assert_user_error(cli("compare", a, five), "different numbers of classes", f"run {five}: 5")
    assert_user_error(cli("compare", a, same, "--data", tmp_path / "absent"), "absent")
    assert not runs(store, "compare")  # every refusal came before a compare run started
