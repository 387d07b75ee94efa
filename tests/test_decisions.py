"""Decisions act only on held-out evidence: promotion needs a significant difference on shared images, an
ensemble of noise is never promoted, a score of unknown provenance is never ranked, a refusing registry moves
nothing. Runs are fabricated through the real MLflow client (a real sqlite store, real artifacts): these tests
only read records, so nothing is trained."""

from __future__ import annotations

import numpy as np
import pytest
from mlflow import MlflowClient

from conftest import ROOT, assert_user_error, fabricate_run, right_on, runs

NAME = "decisions-classifier"
EXPERIMENT = "decisions"
COMMON = f"tracking.registered_model={NAME} tracking.experiment={EXPERIMENT}"


def fabricate(kind, ids, labels, probabilities, **kwargs):
    return fabricate_run(kind, ids, labels, probabilities, experiment=EXPERIMENT, registered_model=NAME, **kwargs)


def promote(cli, *args, overrides=""):
    return cli("promote", "--config", ROOT / "configs/demo.yaml", "--overrides", f"{COMMON} {overrides}", *args)


def aliases(uri):
    return {alias: str(v) for alias, v in MlflowClient(uri).get_registered_model(NAME).aliases.items()}


def test_one_image_better_on_100_is_promoted_only_under_the_better_rule(store, cli):
    ids, labels = [f"img-{n}" for n in range(100)], np.arange(100) % 4
    champion = fabricate("train", ids, labels, right_on(labels, 80), metric="accuracy")
    challenger = fabricate("train", ids, labels, right_on(labels, 81), metric="accuracy")
    assert "PROMOTED: there was no champion yet" in promote(cli, "--run", champion).output

    kept = promote(cli, "--run", challenger)
    assert kept.exit_code == 0, kept.output
    assert "KEPT champion: better by +0.0100, but not significantly: McNemar p-value 1 >= 0.05 on 100 images" \
        in kept.output
    assert "rule significant" in kept.output and "on the 100 images both have held-out predictions for" in kept.output
    assert "95 % CI" in kept.output and "on the validation split (100 images)" in kept.output
    assert aliases(store) == {"champion": "1", "challenger": "2"}
    report = runs(store, "promote")[0]
    assert report.data.metrics["mcnemar_p_value"] == 1.0 and report.data.params["promote_rule"] == "significant"

    promoted = promote(cli, "--run", challenger, overrides="tracking.promote_rule=better")
    assert "PROMOTED: better by +0.0100 (> minimum improvement 0.0)" in promoted.output
    assert "rule better" in promoted.output and aliases(store)["champion"] == "2"
    version = MlflowClient(store).get_model_version(NAME, "2")
    assert "on the validation split (100 images)" in version.description and "95 % CI" in version.description


def test_a_clearly_better_challenger_is_significant(store, cli):
    ids, labels = [f"img-{n}" for n in range(100)], np.arange(100) % 4
    promote(cli, "--run", fabricate("train", ids, labels, right_on(labels, 60)))
    better = promote(cli, "--run", fabricate("train", ids, labels, right_on(labels, 80)))
    assert "PROMOTED: better by +0.2000" in better.output and "and significant: McNemar p-value" in better.output


def test_a_cv_run_is_compared_with_a_train_champion_on_the_validation_images_they_share(store, cli):
    labels = np.arange(200) % 4
    val_ids = [f"val-{n}" for n in range(40)]
    pooled = [*val_ids, *(f"train-{n}" for n in range(160))]  # cv.pool_validation: the pool holds validation
    promote(cli, "--run", fabricate("train", val_ids, labels[:40], right_on(labels[:40], 20), digest="val"))
    oof = right_on(labels, 200)  # right on every pooled image, so on all 40 validation images
    cv_run = fabricate("cv", pooled, labels, oof, rows="out-of-fold", fit="cross-fitted", digest="pool")
    result = promote(cli, "--run", cv_run)
    assert result.exit_code == 0, result.output
    assert "on the 40 images both have held-out predictions for: difference +0.5000" in result.output
    assert "PROMOTED" in result.output and "out-of-fold predictions of 200 pooled images" in result.output


def test_a_score_of_unknown_provenance_is_never_promoted(store, cli):
    ids, labels = [f"img-{n}" for n in range(40)], np.arange(40) % 4
    old = fabricate("ensemble", ids, labels, right_on(labels, 40), source=False)
    assert_user_error(promote(cli, "--run", old), f"run {old}'s final score", "aigc.score_on", "in-sample")
    assert not runs(store, "promote")  # refused before a promote run started


@pytest.mark.slow
def test_an_ensemble_of_noise_beats_its_members_in_sample_but_is_not_promoted(store, cli, dataset_factory):
    """Greedy weights fitted on the validation split: an ensemble of random 'models' beats each of them there;
    cross-fitted it scores near chance, and promote, which reads only that, keeps the honest champion."""
    data = dataset_factory("gic", classes=4, per_class=150, size=16)
    ids = (data / "val.csv").read_text().split()[1:]
    ids, labels = [row.split(",")[0] for row in ids], np.array([int(row.split(",")[1]) for row in ids])
    rng = np.random.default_rng(0)
    members = [fabricate("train", ids, labels, rng.dirichlet(np.ones(4), len(ids)), metric="f1_weighted")
               for _ in range(8)]
    honest = fabricate("train", ids, labels, right_on(labels, int(0.45 * len(ids))), metric="f1_weighted")
    assert "PROMOTED" in promote(cli, "--run", honest).output
    fitted = cli("ensemble", "--data", data, "--config", ROOT / "configs/demo.yaml", "--overrides",
                 f"{COMMON} data.image_size=16", "--members", " ".join(members), "--method", "greedy")
    assert fitted.exit_code == 0, fitted.output
    (run,) = runs(store, "ensemble")
    client, metrics = MlflowClient(store), run.data.metrics
    alone = [client.get_run(m).data.metrics["final_f1_weighted"] for m in members]
    assert metrics["final_f1_weighted_in_sample"] > max(alone)  # it flatters itself where it was fitted
    assert abs(metrics["final_f1_weighted"] - 0.25) < 0.08  # cross-fitted: chance (4 balanced classes)
    kept = promote(cli, "--run", run.info.run_id)
    assert kept.exit_code == 0 and "KEPT champion" in kept.output, kept.output
    assert client.get_model_version_by_alias(NAME, "champion").run_id == honest
