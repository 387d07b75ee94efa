"""Cross-validation building blocks: folds, OOF tables, ensembles fitted on OOF, measured TTA (no MLflow)."""

import shutil

import numpy as np
import pandas as pd
import pytest

from aigc import crossfit
from aigc.ensemble import EnsembleModel, fold_ensemble
from aigc.errors import UserError
from aigc.evaluation import evaluate, metric_function
from aigc.folds import PooledImages, duplicate_groups, fold_indices, make_folds, pool_splits
from aigc.oof import align_oof, average_folds, fold_scores, fold_spread, oof_table

accuracy = metric_function("accuracy", 4)


def pooled(n_classes=4, per_class=30, seed=0):
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(n_classes), per_class)
    ids = [f"img-{rng.integers(1 << 40):011x}-{i}" for i in range(len(labels))]
    return ids, labels


def fold_of(ids, folds):
    return dict(zip(ids, folds.tolist()))


# --- folds ------------------------------------------------------------------------

def test_every_image_gets_one_fold_and_every_fold_validates_every_class():
    ids, labels = pooled()
    folds = make_folds(ids, labels, None, k=5, seed=42)
    assert folds.shape == (len(ids),) and set(folds.tolist()) == {0, 1, 2, 3, 4}
    for fold in range(5):
        train, validation = fold_indices(folds, fold)
        assert len(train) + len(validation) == len(ids) and not set(train) & set(validation)
        # stratified: 30 images per class over 5 folds -> exactly 6 of each class in each fold
        assert np.bincount(labels[validation], minlength=4).tolist() == [6, 6, 6, 6]


def test_stratification_holds_with_uneven_classes():
    labels = np.repeat(np.arange(3), [50, 23, 11])
    ids = [f"{i:04d}" for i in range(len(labels))]
    folds = make_folds(ids, labels, None, k=4, seed=0)
    for label, count in zip(range(3), (50, 23, 11)):
        per_fold = np.bincount(folds[labels == label], minlength=4)
        assert per_fold.max() - per_fold.min() <= 1, (label, per_fold)
        assert per_fold.sum() == count


def test_folds_depend_on_seed_and_ids_not_on_input_order():
    ids, labels = pooled(seed=3)
    groups = np.arange(len(ids)) // 2  # pairs of copies
    reference = fold_of(ids, make_folds(ids, labels, groups, k=5, seed=7))
    rng = np.random.default_rng(0)
    for _ in range(3):
        order = rng.permutation(len(ids))
        shuffled_groups = groups[order] * 13 + 5  # other group numbers, same partition
        again = make_folds([ids[i] for i in order], labels[order], shuffled_groups, k=5, seed=7)
        assert fold_of([ids[i] for i in order], again) == reference
    assert fold_of(ids, make_folds(ids, labels, groups, k=5, seed=8)) != reference


def test_duplicate_groups_from_the_cache_report_never_straddle_folds():
    ids, labels = pooled(per_class=20)
    splits = ["train"] * 60 + ["val"] * 20
    duplicates = [
        [f"train/{ids[0]}", f"val/{ids[70]}", f"test/{'x' * 8}"],  # across splits; test images are not pooled
        [f"val/{ids[70]}", f"train/{ids[5]}"],  # overlaps the first: one group of three
        [f"train/{ids[10]}", f"train/{ids[11]}", f"train/{ids[12]}"],
        [f"train/{ids[20]}", f"train/{ids[61]}"],  # ids[61] is pooled as val, not train: not this image
    ]
    groups = duplicate_groups(splits, ids, duplicates)
    assert groups[0] == groups[70] == groups[5] and groups[10] == groups[11] == groups[12]
    assert groups[20] != groups[61] and len(set(groups.tolist())) == 80 - 2 - 2
    for seed in range(5):
        folds = make_folds(ids, labels, groups, k=4, seed=seed)
        for group in set(groups.tolist()):
            assert len(set(folds[groups == group].tolist())) == 1


def test_pool_of_a_real_cache_keeps_preprocess_duplicates_together(copy_dataset, tmp_path):
    from aigc.data.cache import build_cache
    from aigc.data.layouts import open_dataset

    root = copy_dataset("gic", classes=3, per_class=12)
    dataset = open_dataset(root)
    train, val = dataset.splits["train"], dataset.splits["val"]
    shutil.copy(train.paths[0], val.paths[0])  # the same PNG bytes in train and in validation
    shutil.copy(train.paths[1], train.paths[2])
    dataset = open_dataset(root)  # new mtimes: a new cache
    cache = build_cache(dataset, 16, tmp_path / "cache", workers=1, progress=False)
    pool = pool_splits(dataset, cache)
    assert pool.ids == train.ids + val.ids and len(pool.images) == len(pool.ids) == len(pool.labels)
    n = len(train)
    assert pool.groups[0] == pool.groups[n] and pool.groups[1] == pool.groups[2]
    assert (pool.images[n] == pool.images[0]).all()  # pooled index n is validation image 0
    folds = make_folds(pool.ids, pool.labels, pool.groups, k=3, seed=0)
    assert folds[0] == folds[n] and folds[1] == folds[2]
    assert pool_splits(dataset, cache, pool_validation=False).ids == train.ids


def test_pooled_images_read_like_one_array():
    first = np.arange(5 * 2 * 2 * 3, dtype=np.uint8).reshape(5, 2, 2, 3)
    second = 200 + np.arange(3 * 2 * 2 * 3, dtype=np.uint8).reshape(3, 2, 2, 3)
    both = np.concatenate([first, second])
    pool = PooledImages([first, second])
    assert pool.shape == both.shape and len(pool) == 8
    assert (pool[[7, 0, 5]] == both[[7, 0, 5]]).all() and (pool[6] == both[6]).all()
    view = pool.take([6, 1, 3])
    assert (np.asarray(view) == both[[6, 1, 3]]).all() and (view[1:] == both[[1, 3]]).all()
    assert (view.take([2, 0])[:] == both[[3, 6]]).all()


@pytest.mark.parametrize("k, fragment", [
    (1, "cv.folds=1: cross-validation needs at least 2 folds"),
    (6, "cv.folds=6: class 'cat' has only 5 separate images (6 counting duplicates)"),
])
def test_too_few_or_too_many_folds_are_refused(k, fragment):
    labels = np.array([0] * 6 + [1] * 20)
    groups = np.arange(26)
    groups[1] = groups[0]  # two copies of one cat: 5 separate cats
    with pytest.raises(UserError, match="use cv.folds=5 or fewer" if k == 6 else "at least 2") as error:
        make_folds([str(i) for i in range(26)], labels, groups, k, seed=0, class_names=["cat", "dog"])
    assert fragment in str(error.value)


def test_an_id_twice_in_the_pool_is_refused():
    with pytest.raises(UserError, match="ids listed more than once in the pooled images: a.png"):
        make_folds(["a.png", "b.png", "a.png", "c.png"], np.array([0, 0, 1, 1]), None, k=2, seed=0)


# --- out-of-fold tables -------------------------------------------------------------

def fold_outputs(ids, labels, folds, classes=4, skill=0.7, seed=0):
    """Per fold: (validation ids, probabilities) of a model right on about `skill` of them."""
    rng = np.random.default_rng(seed)
    out = {}
    for fold in sorted(set(folds.tolist())):
        _, validation = fold_indices(folds, fold)
        probabilities = rng.dirichlet(np.ones(classes), len(validation))
        right = rng.random(len(validation)) < skill
        probabilities[right, labels[validation][right]] += 2
        out[fold] = ([ids[i] for i in validation], probabilities / probabilities.sum(axis=1, keepdims=True))
    return out


def test_oof_table_covers_every_pooled_id_once_with_its_fold():
    ids, labels = pooled()
    folds = make_folds(ids, labels, None, k=3, seed=1)
    outputs = fold_outputs(ids, labels, folds)
    table = oof_table(ids, labels, folds, outputs)
    assert list(table.columns) == ["id", "label", "fold", "p_0", "p_1", "p_2", "p_3"]
    assert table["id"].tolist() == ids and table["id"].is_unique
    assert (table["fold"].to_numpy() == folds).all() and (table["label"].to_numpy() == labels).all()
    fold_ids, probabilities = outputs[1]
    row = ids.index(fold_ids[0])
    assert np.allclose(table.iloc[row][["p_0", "p_1", "p_2", "p_3"]].to_numpy(dtype=float), probabilities[0])


def test_oof_table_refuses_a_missing_fold_or_an_image_predicted_by_a_fold_that_trained_on_it():
    ids, labels = pooled()
    folds = make_folds(ids, labels, None, k=3, seed=1)
    outputs = fold_outputs(ids, labels, folds)
    with pytest.raises(ValueError, match=r"40 missing \(folds \[2\]"):
        oof_table(ids, labels, folds, {f: outputs[f] for f in (0, 1)})
    leaked = dict(outputs)
    leaked[0] = (outputs[0][0] + outputs[1][0][:1], np.vstack([outputs[0][1], outputs[1][1][:1]]))
    with pytest.raises(ValueError, match=f"fold 0 predicted images of other folds: {outputs[1][0][0]}"):
        oof_table(ids, labels, folds, leaked)


def test_oof_scores_fold_spread_and_test_average():
    ids, labels = pooled()
    folds = make_folds(ids, labels, None, k=4, seed=2)
    table = oof_table(ids, labels, folds, fold_outputs(ids, labels, folds))
    names = ["a", "b", "c", "d"]
    probabilities = table[["p_0", "p_1", "p_2", "p_3"]].to_numpy()
    result = evaluate(probabilities, labels, names)
    log_loss = -np.mean(np.log(probabilities[np.arange(len(labels)), labels]))
    assert result.metrics["log_loss"] == pytest.approx(log_loss)
    assert result.confusion.sum() == len(ids)
    scores = fold_scores(table, names)
    assert scores["fold"].tolist() == [0, 1, 2, 3] and scores["images"].sum() == len(ids)
    first = table[table["fold"] == 0]
    assert scores.loc[0, "accuracy"] == pytest.approx(np.mean(first[["p_0", "p_1", "p_2", "p_3"]].to_numpy()
                                                              .argmax(axis=1) == first["label"]))
    spread = fold_spread(scores)
    assert spread["fold_accuracy_mean"] == pytest.approx(scores["accuracy"].mean())
    assert spread["fold_log_loss_std"] == pytest.approx(np.std(scores["log_loss"]))
    tests = [np.full((3, 4), 0.25), np.eye(4)[[0, 1, 2]]]
    assert np.allclose(average_folds(tests), (tests[0] + tests[1]) / 2)


# --- ensembles fitted on OOF ------------------------------------------------------

def test_greedy_ensemble_is_fitted_on_oof_tables_aligned_by_id(tmp_path):
    ids, labels = pooled(per_class=40)
    ids = [str(1000 + i) for i in range(len(ids))]  # numeric-looking ids read back from CSV as numbers
    folds_a = make_folds(ids, labels, None, k=3, seed=1)
    folds_b = make_folds(ids, labels, None, k=4, seed=2)  # another CV run: other folds, same images
    table_a = oof_table(ids, labels, folds_a, fold_outputs(ids, labels, folds_a, skill=0.5, seed=1))
    table_b = oof_table(ids, labels, folds_b, fold_outputs(ids, labels, folds_b, skill=0.45, seed=2))
    table_b = table_b.sample(frac=1, random_state=0)  # another row order
    table_b.to_csv(tmp_path / "b.csv", index=False)
    aligned = align_oof({"cv-a": table_a, "cv-b": pd.read_csv(tmp_path / "b.csv")})
    assert aligned.ids == tuple(ids) and (aligned.labels == labels).all()
    by_id = table_b.set_index("id").loc[ids, ["p_0", "p_1", "p_2", "p_3"]].to_numpy()
    assert np.allclose(aligned.probabilities[1], by_id)
    fitted = crossfit.cross_fit(crossfit.ensemble("greedy", aligned.probabilities, aligned.labels, accuracy),
                                aligned.labels, folds_a)
    member_scores = [accuracy(labels, p.argmax(axis=1)) for p in aligned.probabilities]
    assert accuracy(labels, fitted.in_sample.argmax(axis=1)) >= max(member_scores)  # where it was fitted
    assert np.isclose(fitted.parameters.sum(), 1) and (fitted.parameters >= 0).all()
    assert (fitted.parts == folds_a).all()  # each fold scored by weights fitted on the other folds


def test_oof_ensemble_refuses_runs_whose_oof_ids_differ():
    ids, labels = pooled()
    folds = make_folds(ids, labels, None, k=3, seed=1)
    table = oof_table(ids, labels, folds, fold_outputs(ids, labels, folds))
    other = table.iloc[:-1].copy()
    other.loc[0, "id"] = "stranger.png"
    with pytest.raises(UserError) as error:
        align_oof({"cv-run-1": table, "cv-run-2": other})
    message = str(error.value)
    assert "CV runs cv-run-1 and cv-run-2 have different out-of-fold ids" in message
    assert "1 only in cv-run-2 (stranger.png)" in message and "2 only in cv-run-1" in message
    relabelled = table.copy()
    relabelled.loc[3, "label"] = (relabelled.loc[3, "label"] + 1) % 4
    with pytest.raises(UserError, match=f"disagree on the labels of 1 images \\({ids[3]}\\)"):
        align_oof({"cv-run-1": table, "cv-run-3": relabelled})
    with pytest.raises(UserError, match="at least 2 CV runs"):
        align_oof({"cv-run-1": table})


def test_fold_ensemble_description_has_k_equal_members_and_its_tta():
    spec = fold_ensemble([f"models:/m-{i}" for i in range(5)], [f"run{i}" for i in range(5)], ["identity", "hflip"])
    assert spec["method"] == "soft" and spec["selection"] == "cv-folds" and spec["tta"] == ["identity", "hflip"]
    assert [m["model_uri"] for m in spec["members"]] == [f"models:/m-{i}" for i in range(5)]
    assert {m["weight"] for m in spec["members"]} == {0.2} and spec["members"][3]["run_id"] == "run3"
    assert "tta" not in fold_ensemble(["models:/m-0", "models:/m-1"], ["r0", "r1"])
    with pytest.raises(UserError, match="ensemble tta: \\['identity', 'spin'\\] is not a TTA set"):
        fold_ensemble(["models:/m-0", "models:/m-1"], ["r0", "r1"], ["identity", "spin"])


# --- test-time augmentation -------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_model():
    """A real Keras classifier (flatten + softmax), untrained: its outputs depend on every pixel's place."""
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((12, 12, 3)), keras.layers.Rescaling(1 / 255), keras.layers.Flatten(),
                              keras.layers.Dense(3, activation="softmax")])
    return model


def images(count=40, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (count, 12, 12, 3), dtype=np.uint8)


def test_transforms_keep_the_shape_and_move_pixels_as_named():
    from aigc.tta import TRANSFORMS, apply

    batch = images(4).astype(np.float32)
    for name in TRANSFORMS:
        assert np.asarray(apply(name, batch)).shape == batch.shape, name
    assert (np.asarray(apply("hflip", batch)) == batch[:, :, ::-1]).all()
    right = np.asarray(apply("shift_right", batch))  # 12 px / 16 -> 1 px; the edge column repeats
    assert (right[:, :, 1:] == batch[:, :, :-1]).all() and (right[:, :, :1] == batch[:, :, :1]).all()
    up = np.asarray(apply("shift_up", batch))
    assert (up[:, :-1] == batch[:, 1:]).all() and (up[:, -1:] == batch[:, -1:]).all()
    flat = np.full((1, 12, 12, 3), 77.0, np.float32)
    for name in ("zoom", "crop_tl", "crop_br"):
        assert np.allclose(np.asarray(apply(name, flat)), 77.0)


def test_predict_applies_exactly_the_named_transforms(tiny_model):
    from aigc.inference import predict_probabilities

    x = images(10)
    plain = tiny_model.predict(x.astype(np.float32), verbose=0)
    flipped = tiny_model.predict(x[:, :, ::-1].astype(np.float32), verbose=0)
    assert np.allclose(predict_probabilities(tiny_model, x, 4), plain, atol=1e-6)
    assert np.allclose(predict_probabilities(tiny_model, x, 4, True), (plain + flipped) / 2, atol=1e-6)
    assert np.allclose(predict_probabilities(tiny_model, x, 4, ["hflip"]), flipped, atol=1e-6)
    stored = EnsembleModel([tiny_model], [1.0], "soft", tta=["identity", "hflip"])
    assert np.allclose(predict_probabilities(stored, x, 4), (plain + flipped) / 2, atol=1e-6)  # what was stored
    assert np.allclose(predict_probabilities(stored, x, 4, ["identity"]), plain, atol=1e-6)  # switched off
    with pytest.raises(UserError, match="unknown: rotate"):
        predict_probabilities(tiny_model, x, 4, ["identity", "rotate"])
    pool = PooledImages([x[:6], x[6:]]).take([9, 0, 4])
    assert np.allclose(predict_probabilities(tiny_model, pool, 2, True), ((plain + flipped) / 2)[[9, 0, 4]], atol=1e-6)


def test_every_view_in_one_pass_gives_what_each_view_alone_gives(tiny_model):
    from aigc.inference import predict_probabilities, view_probabilities
    from aigc.tta import CANDIDATES

    x = images(23)  # batches of 2 views x 5 images and a last, short one
    views = view_probabilities(tiny_model, x, 12, ("identity", *CANDIDATES))
    assert list(views) == ["identity", *CANDIDATES]
    for name, probabilities in views.items():
        np.testing.assert_allclose(probabilities, predict_probabilities(tiny_model, x, 4, [name]), atol=1e-5)


def test_a_temperature_is_applied_once_after_the_tta_average_and_never_changes_the_class(tiny_model):
    """What a calibrated fold ensemble with TTA writes: T fitted on TTA-averaged probabilities, applied to them."""
    from aigc.evaluation import apply_temperature
    from aigc.inference import predict_probabilities

    x = images(30)
    plain = tiny_model.predict(x.astype(np.float32), verbose=0)
    flipped = tiny_model.predict(x[:, :, ::-1].astype(np.float32), verbose=0)
    calibrated = EnsembleModel([tiny_model, tiny_model], [0.5, 0.5], "soft", tta=["identity", "hflip"], temperature=3.0)
    written = predict_probabilities(calibrated, x, 8)
    np.testing.assert_allclose(written, apply_temperature((plain + flipped) / 2, 3.0), atol=1e-5)
    assert (written.argmax(axis=1) == ((plain + flipped) / 2).argmax(axis=1)).all()
    # a member of a larger ensemble predicts as it would alone: its own TTA and temperature
    outer = EnsembleModel([calibrated], [1.0], "soft")
    np.testing.assert_allclose(predict_probabilities(outer, x, 8), written, atol=1e-6)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_measured_tta_never_scores_below_identity_and_predict_reproduces_it(tiny_model, seed):
    from aigc.inference import predict_probabilities
    from aigc.tta import measure_tta

    x = images(60, seed)
    labels = np.random.default_rng(seed + 10).integers(0, 3, len(x))
    choice = measure_tta(lambda imgs, name: predict_probabilities(tiny_model, imgs, 16, [name]), x, labels, accuracy)
    identity = accuracy(labels, predict_probabilities(tiny_model, x, 16, ["identity"]).argmax(axis=1))
    assert choice.identity_score == identity and choice.score >= identity and choice.transforms[0] == "identity"
    again = predict_probabilities(tiny_model, x, 16, list(choice.transforms))
    assert accuracy(labels, again.argmax(axis=1)) == choice.score
    assert ("identity", identity) == choice.trials[0] and len(choice.trials) >= 11


def test_tta_keeps_a_transform_only_when_it_helps():
    from aigc.tta import choose_tta

    labels = np.array([0, 1, 0, 1])
    identity = np.array([[0.6, 0.4], [0.45, 0.55], [0.4, 0.6], [0.4, 0.6]])  # image 2 wrong
    helps = np.array([[0.6, 0.4], [0.4, 0.6], [0.9, 0.1], [0.4, 0.6]])  # fixes it when averaged
    hurts = np.array([[0.0, 1.0], [1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    choice = choose_tta({"identity": identity, "hurts": hurts, "helps": helps}, labels, accuracy)
    assert choice.transforms == ("identity", "helps") and choice.identity_score == 0.75 and choice.score == 1.0
    assert choice.gain == 0.25
    alone = choose_tta({"identity": identity, "hurts": hurts}, labels, accuracy)
    assert alone.transforms == ("identity",) and alone.score == alone.identity_score == 0.75
    assert choose_tta({"identity": identity, "helps": helps}, labels, accuracy, min_gain=0.3).transforms == ("identity",)


def test_the_cv_budget_covers_every_round_and_the_tta_predictions():
    """train.budget_minutes is the whole cv's: 3 folds x 2 rounds (pseudo-labels) share it, less a reserve for
    predicting every pooled image once per TTA candidate (re-estimated from the pace the first fold measured), which
    the last round's folds spend as each finishes."""
    from aigc import config as config_module, tta
    from aigc.steps.cv import Work, fold_budget

    config = config_module.load(None, "train.budget_minutes=60 cv.folds=3 cv.pseudo_label.rounds=1")
    work = Work(config, trainings=6, pooled=12_000)
    first = work.fold_config().train
    assert first.budget_minutes == pytest.approx(60 * (1 - Work.RESERVE) / 6) and first.calibrate == "none"
    work.trained({"seconds": 600.0, "images_per_second": 50.0})  # a fold used 10 minutes, trained 50 images/s
    reserve = (1 + len(tta.CANDIDATES)) * 12_000 / (50.0 * Work.PREDICT_SPEEDUP)
    assert work.fold_config().train.budget_minutes == pytest.approx((3600 - 600 - reserve) / 5 / 60)
    for n in range(5):  # each fold of the last round (n >= 2) also predicts its own out-of-fold images' views
        assert work.fold_config().train.budget_minutes == pytest.approx((3600 - 600 - reserve) / 5 / 60)
        views = reserve / 3 if n >= 2 else 0
        work.trained({"seconds": (3600 - 600 - reserve) / 5 + views, "images_per_second": 50.0})
    assert work.spent + work.reserve == pytest.approx(3600) and work.reserve == 0  # the hour, all of it, and no more
    assert fold_budget(100, 200, 0, 2) == 5.0  # overspent: a fold still gets its one epoch
