"""Self-contained HTML pages that aigc logs as artifacts: inline PNG thumbnails, no external files.

They open in the MLflow UI's artifact view (an iframe that allows scripts) and from a downloaded
file. `gallery_html` and `table_html` have no script; `confusion_html` has one small inline script
for what only a click can do (a cell's examples, sorting, filtering) and shows counts and mistakes
without it.
"""

from __future__ import annotations

import base64
import html
import io
import json
from collections.abc import Sequence

import numpy as np
from PIL import Image


def thumbnail_uri(image: np.ndarray, side: int = 96) -> str:
    """An image as an inline PNG data URI, at most `side` pixels on a side."""
    picture = Image.fromarray(np.asarray(image, dtype=np.uint8))
    picture.thumbnail((side, side))
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def gallery_html(title: str, sections: Sequence[tuple[str, Sequence[tuple[np.ndarray, str]]]],
                 note: str = "") -> str:
    """A self-contained HTML page: per section a heading and its (image, caption) thumbnails."""
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             "<style>body{font-family:sans-serif;margin:1em}figure{display:inline-block;margin:4px;"
             "width:110px;vertical-align:top;font-size:10px;word-break:break-all}"
             "img{width:96px;height:96px;image-rendering:pixelated;border:1px solid #999}</style></head><body>",
             f"<h1>{html.escape(title)}</h1>", f"<p>{html.escape(note)}</p>" if note else ""]
    for heading, items in sections:
        parts.append(f"<h2>{html.escape(heading)} ({len(items)})</h2><div>")
        for image, caption in items:
            parts.append(f"<figure><img src='{thumbnail_uri(image)}' alt=''>"
                         f"<figcaption>{html.escape(caption)}</figcaption></figure>")
        parts.append("</div>")
    parts.append("</body></html>")
    return "\n".join(parts)


def table_html(title: str, frame, note: str = "", signed: Sequence[str] = ()) -> str:
    """A self-contained HTML page of one table (a pandas DataFrame); the `signed` columns (differences)
    are green above zero and red below, so what changed stands out."""
    cells = []
    for row in frame.itertuples(index=False):
        tds = []
        for column, value in zip(frame.columns, row):
            tone = (" class='up'" if value > 0 else " class='down'" if value < 0 else "") if column in signed else ""
            text = f"{value:+.4f}" if column in signed else f"{value:.4f}" if isinstance(value, float) else str(value)
            tds.append(f"<td{tone}>{html.escape(text)}</td>")
        cells.append(f"<tr>{''.join(tds)}</tr>")
    header = "".join(f"<th>{html.escape(str(column))}</th>" for column in frame.columns)
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>"
            "body{font:13px sans-serif;margin:1em}table{border-collapse:collapse}td,th{border:1px solid #ccc;"
            "padding:2px 6px;text-align:right}td:first-child{text-align:left}td.up{background:#e8f5e9}"
            "td.down{background:#ffebee}</style></head><body>"
            f"<h1>{html.escape(title)}</h1>{f'<p>{html.escape(note)}</p>' if note else ''}"
            f"<table><tr>{header}</tr>{''.join(cells)}</table></body></html>")


CONFUSION_STYLE = (
    "body{font:12px sans-serif;margin:1em}table{border-collapse:collapse}td,th{border:1px solid #ccc;"
    "padding:2px;vertical-align:top}td{cursor:pointer;min-width:40px}td.ok{background:#e8f5e9}"
    "td.bad{background:#ffebee}td.on{outline:2px solid #1565c0}img{width:32px;height:32px;"
    "image-rendering:pixelated;margin:1px}figure{display:inline-block;margin:3px;width:84px;"
    "vertical-align:top;overflow-wrap:anywhere;font-size:10px}figure img{width:64px;height:64px}"
    "#controls{margin:.5em 0}#controls>*{margin-right:1em}")

# Cells are clicked, rows and columns reordered, the mistakes filtered; figures carry data-t/data-p
# (true/predicted class index) and live once, in #pool (correct ones) or #mistakes.
CONFUSION_SCRIPT = """
const $ = (s) => document.querySelector(s), all = (s) => [...document.querySelectorAll(s)];
const figures = all('#pool figure, #mistakes figure');
function showCell(td) {
  all('td.on').forEach((c) => c.classList.remove('on')); td.classList.add('on');
  const t = td.dataset.t, p = td.dataset.p, picked = figures.filter((f) => f.dataset.t === t && f.dataset.p === p);
  $('#cellhead').textContent = `true ${NAMES[t]}, predicted ${NAMES[p]}: ${td.dataset.n} images` +
    (picked.length < +td.dataset.n ? `, the ${picked.length} most confident shown` : '');
  $('#cell').replaceChildren(...picked.map((f) => f.cloneNode(true)));
}
all('#matrix td').forEach((td) => td.addEventListener('click', () => showCell(td)));
let sorted = false;
$('#sort').addEventListener('click', () => {
  sorted = !sorted;
  const order = NAMES.map((_, i) => i);
  if (sorted) order.sort((a, b) => ERROR[b] - ERROR[a]);
  const rows = order.map((i) => $(`#matrix tr[data-t="${i}"]`));
  rows.forEach((row) => {
    const cells = Object.fromEntries([...row.querySelectorAll('td')].map((td) => [td.dataset.p, td]));
    order.forEach((i) => row.appendChild(cells[i]));
    row.parentNode.appendChild(row);
  });
  const head = $('#matrix tr.head'), ths = Object.fromEntries([...head.querySelectorAll('th[data-p]')]
    .map((th) => [th.dataset.p, th]));
  order.forEach((i) => head.appendChild(ths[i]));
  $('#sort').textContent = sorted ? 'original class order' : 'sort classes by error rate';
});
function filter() {
  const t = $('#ft').value, p = $('#fp').value;
  let shown = 0;
  all('#mistakes figure').forEach((f) => {
    const on = (!t || f.dataset.t === t) && (!p || f.dataset.p === p);
    f.hidden = !on; shown += on;
  });
  $('#shown').textContent = `${shown} shown`;
}
$('#ft').addEventListener('change', filter); $('#fp').addEventListener('change', filter);
filter();
"""


def confusion_html(images: np.ndarray, labels: np.ndarray, predictions: np.ndarray, confidence: np.ndarray,
                   class_names, ids=None, per_cell: int = 24, scored_on: str = "") -> str:
    """The confusion matrix as a page a person can work with: counts per cell (rows: true class), a
    click on a cell shows its images (up to `per_cell`, most confident first), a button sorts the
    classes by error rate, and the mistakes gallery filters by true and predicted class. Hovering
    a thumbnail names its image (`ids`, else its row number). `scored_on`: which images these are
    (aigc.scores.Source.phrase), the page's heading."""
    labels, predictions = np.asarray(labels), np.asarray(predictions)
    ids = list(range(len(labels))) if ids is None else list(ids)
    k = len(class_names)
    # Image indices grouped by cell, most confident first, in one sort instead of a scan per cell.
    cell_of = labels * k + predictions
    order = np.lexsort((-np.asarray(confidence), cell_of))
    starts = np.searchsorted(cell_of[order], np.arange(k * k + 1))
    counts = np.diff(starts).reshape(k, k)
    error = 1 - np.diag(counts) / np.maximum(counts.sum(axis=1), 1)  # per true class: 1 - recall
    names = [html.escape(str(c)) for c in class_names]

    def figure(i: int) -> str:
        name = html.escape(str(ids[i]))
        return (f'<figure data-t="{labels[i]}" data-p="{predictions[i]}"><img src="{thumbnail_uri(images[i], 48)}" '
                f'title="{name}" alt="{name}"><figcaption>{name}<br>true {names[labels[i]]}, pred '
                f'{names[predictions[i]]} {confidence[i]:.0%}</figcaption></figure>')

    rows, pool, mistakes = [], [], []
    for true in range(k):
        cells = []
        for predicted in range(k):
            members = order[starts[true * k + predicted]:starts[true * k + predicted + 1]][:per_cell]
            (pool if true == predicted else mistakes).extend(members)
            tone = "ok" if true == predicted else ("bad" if counts[true, predicted] else "")
            cells.append(f'<td class="{tone}" data-t="{true}" data-p="{predicted}" data-n="{counts[true, predicted]}">'
                         f'<b>{counts[true, predicted]}</b></td>')
        rows.append(f'<tr data-t="{true}"><th>{names[true]} ({error[true]:.0%} wrong)</th>{"".join(cells)}</tr>')
    mistakes.sort(key=lambda i: -confidence[i])
    options = "".join(f'<option value="{i}">{n}</option>' for i, n in enumerate(names))
    header = "".join(f'<th data-p="{i}">{n}</th>' for i, n in enumerate(names))
    script = f"const NAMES = {json.dumps([str(c) for c in class_names])}, ERROR = {json.dumps(error.round(4).tolist())};"
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><style>{CONFUSION_STYLE}</style></head><body>"
        f"<h2>Confusion matrix of {html.escape(scored_on or f'{len(labels)} images')}</h2>"
        f"<p>Rows: true class (with its error rate), columns: predicted class. Click a cell to see its images "
        f"(up to {per_cell}, most confident first).</p>"
        f"<div id='controls'><button id='sort'>sort classes by error rate</button>"
        f"<label>mistakes, true <select id='ft'><option value=''>any</option>{options}</select></label>"
        f"<label>predicted <select id='fp'><option value=''>any</option>{options}</select></label>"
        f"<span id='shown'></span></div>"
        f"<table id='matrix'><tr class='head'><th>true \\ pred</th>{header}</tr>{''.join(rows)}</table>"
        f"<h3 id='cellhead'>Click a cell to see its images</h3><div id='cell'></div>"
        f"<h3>Mistakes, most confident first</h3><div id='mistakes'>{''.join(figure(i) for i in mistakes)}</div>"
        f"<div id='pool' hidden>{''.join(figure(i) for i in pool)}</div>"
        f"<script>{script}{CONFUSION_SCRIPT}</script></body></html>")
