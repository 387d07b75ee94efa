"""`make ui-check`: the MLflow UI on a store, driven in headless Chromium; asserts what a user must see.

    python tests/ui_check.py [STORE_URI] [OUT_DIR]     (defaults: sqlite:///mlflow.db, ui-check)

Starts `mlflow server` on the store, opens the experiment, a train run's overview, charts and HTML
confusion matrix, the registered model's version and the champion's logged-model page, writes a
screenshot of each to OUT_DIR and exits 1 naming what was missing. Chromium is Debian's (`chromium`),
driven by the `playwright` package: its own browser download cannot be fetched here.
"""

from __future__ import annotations

import re
import shutil
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

sys.path.insert(0, str(Path(__file__).resolve().parent))

from servers import mlflow_server  # noqa: E402

CHROMIUM_ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
TRAIN_RUNS = quote("tags.`aigc.kind` = 'train'")  # a runs-table search filter
SHARED_VIEW = "mlflow.sharedViewState.aigc-runs"  # aigc.tracking.share_runs_view's experiment tag
SETTLE_MS = 30000  # the most a page may take to show what it must (the UI fetches after it loads; 2 shared
#                    cores are slow): each check waits until what it looks for is there, not a fixed time


def browser_missing() -> str | None:
    """Why the check cannot run here, or None."""
    if not shutil.which("chromium"):
        return "Debian's chromium is not installed (apt-get install chromium; .ci/run does)"
    try:
        import playwright  # noqa: F401
    except ImportError:
        return "the playwright package is not installed (pip install -e '.[test]')"
    return None


def check(store_uri: str, out: Path) -> list[str]:
    """Visit every page, screenshot it into `out`; the list of what a user would miss (empty: all seen)."""
    from mlflow import MlflowClient
    from playwright.sync_api import sync_playwright

    if store_uri.startswith("sqlite:///") and not store_uri.startswith("sqlite:////"):
        # a relative path (make's sqlite:///mlflow.db) would name a new, empty store in the server's folder
        store_uri = f"sqlite:///{Path(store_uri.removeprefix('sqlite:///')).resolve()}"
    client = MlflowClient(store_uri)
    train = next(r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])
                 if r.data.tags.get("aigc.kind") == "train" and r.data.tags.get("aigc.model_uri"))
    experiment, run_id = train.info.experiment_id, train.info.run_id
    metric = train.data.tags.get("aigc.metric", "accuracy")
    name = train.data.tags["aigc.registered_model"]
    champion = client.get_model_version_by_alias(name, "champion")
    model_id = champion.source.removeprefix("models:/")
    run_page = f"#/experiments/{experiment}/runs/{run_id}"
    shared = f"#/experiments/{experiment}/runs?viewStateShareKey=aigc-runs&workflowType=machine_learning"
    if SHARED_VIEW not in client.get_experiment(experiment).tags:  # every aigc run shares it when it ends
        return [f"experiment {experiment} has no shared runs view ({SHARED_VIEW}): the link aigc prints opens nothing"]
    pages = [  # (screenshot, URL, what must show)
        # the experiment filtered to its train runs: its description and the count of matching runs
        ("experiment", f"#/experiments/{experiment}/runs?workflowType=machine_learning&searchFilter={TRAIN_RUNS}",
         ["aigc image classification", "matching run"]),
        # the shared view's charts: the runs' curves (not the groups'), their legends naming the runs by aigc's names,
        # and the epoch images as cards that show them (the UI's default card lists every param above them)
        ("experiment-charts", f"{shared}&compareRunsMode=CHART",
         ["val_accuracy", f"{train.info.run_name} (epoch/val_accuracy)"]),
        ("run-overview", run_page, ["Description", "best epoch", f"final_{metric}", "Datasets", "95 % CI"]),
        ("run-charts", f"{run_page}/model-metrics", ["val_accuracy", "val_loss", "validation_examples"]),
        ("confusion-matrix", f"{run_page}/artifacts/evaluation/confusion_examples.html", ["confusion_examples.html"]),
        # the version says what its score is and which images it was measured on
        ("registered-model", f"#/models/{name}/versions/{champion.version}",
         ["champion", "Champion", "95 % CI", "on the validation split" if champion.tags.get("aigc.score_on") ==
          "validation" else "on out-of-fold predictions"]),
        ("logged-model", f"#/experiments/{experiment}/models/{model_id}", [name]),
        # last: the UI keeps a shared view's grouping for the pages after it
        ("runs-view", shared, [f"final_{metric}", "aigc.kind", "Group: train", train.info.run_name]),
    ]
    out.mkdir(parents=True, exist_ok=True)
    missing = []
    with tempfile.TemporaryDirectory() as folder, mlflow_server(store_uri, Path(folder)) as server, \
            sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=shutil.which("chromium"), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        for shot, url, expected in pages:
            page.goto(f"{server.uri}/{url}")
            if shot.endswith("charts"):
                # the curves' section (keys epoch/...) heads the page, the single-value scores after it; the
                # sections' headings read "name\n(count)"
                sections = until(page, lambda: re.findall(r"^(.+)\n\(\d+\)$", page.inner_text("body"), re.M))
                if sections[:1] != ["epoch"]:
                    missing.append(f"{shot}: the chart sections are {sections} at {url}, not the curves' (epoch) first")
                if shot == "experiment-charts":  # the epoch images' cards, as a user finds them
                    page.get_by_placeholder("Search metric charts").fill("validation_examples")
                    if not until(page, lambda: on_screen_images(page)):
                        missing.append(f"{shot}: no epoch image is on screen in its card at {url} (hidden by the "
                                       "run's params?)")
                # the grid draws the charts in view: find the curves as a user would
                page.get_by_placeholder("Search metric charts").fill("val")
            until(page, lambda: all(want in page.inner_text("body") for want in expected))  # noqa: B023 (called here)
            if shot == "runs-view" and not page.get_by_text(f"final_{metric}", exact=True).first.is_visible():
                missing.append(f"{shot}: the score column final_{metric} is not on the first screen at {url}")
            text = page.inner_text("body")
            missing += [f"{shot}: {want!r} not shown at {url}" for want in expected if want not in text]
            if shot == "confusion-matrix":  # the HTML artifact renders in an iframe: its thumbnails must load
                if not until(page, lambda: sum(f.locator("img").count() for f in inner_frames(page))):
                    missing.append(f"{shot}: the HTML confusion matrix shows no images")
                if not until(page, lambda: "Confusion matrix of the validation split (" in " ".join(
                        f.inner_text("body") for f in inner_frames(page) if f.locator("h2").count())):
                    missing.append(f"{shot}: the HTML confusion matrix does not say which images it is on")
            page.screenshot(path=str(out / f"{shot}.png"))
        browser.close()
    return missing


def until(page, seen, timeout_ms: int = SETTLE_MS):
    """Poll `seen()` until it is true or `timeout_ms` have passed; its last value (what the caller reports).

    It waits in the browser, not in time.sleep: Playwright's sync API hears of new frames only while a call
    into it runs. With time.sleep, a poll over page.frames that found none made no call, so an iframe that
    appeared after the poll began was never seen (the HTML confusion matrix "showed no images" on loaded
    machines, CI included: reproduced, 20 polls over 10 s saw no frame while the page had loaded it at 3.6 s)."""
    deadline = time.monotonic() + timeout_ms / 1000
    while not (value := seen()) and time.monotonic() < deadline:
        page.wait_for_timeout(250)
    return value


def inner_frames(page) -> list:
    """The page's iframes (an HTML artifact renders in one)."""
    return [f for f in page.frames if f != page.main_frame]


def on_screen_images(page) -> int:
    """Images a person actually sees: at least 40 px each way, in the viewport, and the topmost element at their
    centre (an image pushed out of its card by text is clipped away: another element is there)."""
    return page.evaluate("""() => [...document.images].filter(img => {
        const box = img.getBoundingClientRect();
        if (box.width < 40 || box.height < 40 || box.bottom > innerHeight || box.right > innerWidth) return false;
        const top = document.elementFromPoint(box.left + box.width / 2, box.top + box.height / 2);
        return top === img || img.contains(top);
    }).length""")


def main(argv: list[str]) -> int:
    store = argv[0] if argv else "sqlite:///mlflow.db"
    out = Path(argv[1] if len(argv) > 1 else "ui-check")
    reason = browser_missing()
    if reason:
        print(f"ui-check: {reason}", file=sys.stderr)
        return 2
    missing = check(store, out)
    for line in missing:
        print(f"ui-check: {line}", file=sys.stderr)
    print(f"ui-check: {'FAILED' if missing else 'ok'}; screenshots in {out}/")
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
