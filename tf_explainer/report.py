"""An HTML report of one explainer that a person can read without the paper (docs/method.md).

Numbers alone do not say whether a part filter is a part. The report gives, per conv-interp-2
filter, the part it detects, where its peak sits relative to every landmark (mean offset and hit
rate), its twins and category, and its strongest images whole, with its peak and the landmarks
drawn; then summary tables (filters per part and category, the explainer beside the performer's
top conv, the method beside its baseline and ablations) that say what good values are; and for a
few probe images which filters carried the prediction. It is self-contained (inline CSS, no
scripts, no network); the PNG images sit beside index.html and are linked by relative paths, so
the folder can be copied.
"""

import html
import json
import os

import numpy as np
import tensorflow as tf
from PIL import Image, ImageDraw

from tf_explainer import evaluation, visualize
from tf_explainer.metrics import parts as part_metrics
from tf_explainer.metrics.instability import map_peaks

REPORT_FILE = "index.html"
TOP_CONTRIBUTORS = 5  # bars per probe image
OVERLAID_CONTRIBUTORS = 3  # filters drawn on each probe image
THUMBNAIL_SIDE = 160  # a filter's strongest images, whole, scaled to this longer side
PROBE_SIDE = 176  # probe images and their overlays (four and the bars fit one row)
THUMBNAIL_GAP = 4  # white pixels between the thumbnails of one filter
PEAK_COLOUR = (255, 255, 255)  # the cross on a filter's peak, outlined in black
OUTLINE_COLOUR = (0, 0, 0)
LANDMARK_COLOURS = [tuple(int(c) for c in colour) for colour in visualize.PALETTE]
OVERLAY_ALPHA = 0.85  # opacity of a part map at its peak on the probe images
BACKGROUND_DIMMING = 0.7  # probe images are shown grey and dimmed so the part maps stand out
# The method's baseline and ablations, as evaluation results are named (tools/demo.py):
# name -> (row label, what it changes, what a lower method instability than this row shows,
# what an equal or higher one shows).
COMPARISONS = {
    "explainer_cls": ("Explainer+cls (baseline)",
                      "the same explainer trained on the labels instead of the performer's "
                      "features",
                      "learning from the performer's features, without labels, gives filters "
                      "that track parts better than learning from the labels",
                      "learning from the performer's features gains no part stability over "
                      "learning from the labels here"),
    "no_filter_loss": ("lambda 0 (no filter loss)",
                       "the same explainer trained without the filter loss",
                       "the filter loss, not the architecture, makes the filters track parts",
                       "the filter loss does not make the filters track parts better than the "
                       "architecture alone here"),
    "no_masks": ("no masks", "the same explainer without the part masks",
                 "the masks help each filter keep to one part",
                 "the masks do not help the filters keep to one part here"),
}

_CSS = """
body { font-family: system-ui, sans-serif; margin: 24px; color: #222; max-width: 1200px; }
h1 { margin-bottom: 4px; }
h2 { border-bottom: 2px solid #ddd; padding-bottom: 4px; margin-top: 32px; }
table { border-collapse: collapse; margin: 8px 0; }
th, td { border: 1px solid #ccc; padding: 3px 10px; text-align: left; font-size: 14px;
         vertical-align: top; }
th { background: #f3f3f3; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.reading { max-width: 420px; font-size: 13px; color: #333; }
tr.part td { font-weight: bold; background: #f4f9ff; }
.meta { color: #555; } .note { color: #555; font-size: 14px; max-width: 900px; }
.howto { background: #f8f8f4; border: 1px solid #e4e4d8; padding: 8px 14px; max-width: 900px; }
.howto p { margin: 6px 0; font-size: 14px; }
.filter { border-bottom: 1px solid #eee; padding: 12px 0; }
.filter h3 { margin: 0 0 4px 0; font-size: 17px; }
.filter .facts { display: flex; gap: 24px; align-items: flex-start; flex-wrap: wrap; }
.legend { display: flex; gap: 14px; flex-wrap: wrap; font-size: 14px; margin: 6px 0 10px 0; }
.legend span, .dot { display: inline-flex; align-items: center; gap: 5px; }
.dot::before { content: ""; width: 11px; height: 11px; border-radius: 50%;
               border: 1px solid #000; background: var(--c); }
.probe { display: flex; gap: 16px; align-items: flex-start; flex-wrap: wrap;
         border-bottom: 1px solid #eee; padding: 12px 0; }
figure { margin: 0; } figcaption { font-size: 13px; color: #444; margin-top: 2px; }
.probe figure { width: 180px; }
img { border: 1px solid #ccc; }
.bars { width: 400px; flex: none; }
.bar-row { display: flex; align-items: center; gap: 6px; font-size: 13px; margin: 3px 0; }
.swatch { width: 12px; height: 12px; flex: none; } .bar-label { width: 190px; }
.bar-track { width: 100px; flex: none; height: 14px; background: #f0f0f0; }
.bar { height: 14px; } .bar.pos { background: #2a7ab0; } .bar.neg { background: #c0504d; }
.bar-value { width: 60px; text-align: right; font-variant-numeric: tabular-nums; }
"""


def write_report(explainer, performer, dataset, out_dir, class_names, landmark_names,
                 probe_images=4, per_filter=6, max_filters=None, comparisons=None, top_k=100):
    """Writes index.html and its PNGs into out_dir; returns the path of index.html.

    dataset: batches of {"image", "raw", "label", "landmarks"} (the test split, in a fixed
    order: it is read twice), with the performer attached to the explainer. Filters are listed
    most stable first; max_filters keeps the first ones; each shows its `per_filter` strongest
    images of its category. comparisons: {name: evaluation.evaluate result} of the baseline and
    ablations measured on the same data (load_comparisons reads them from an evaluation's
    metrics.json); an entry named "explainer" (the method itself) only lends its training record.
    """
    os.makedirs(out_dir, exist_ok=True)
    names = [str(name) for name in class_names]
    landmark_names = [str(name) for name in landmark_names]
    collected = evaluation.collect(explainer, dataset)
    geometries = evaluation.performer_geometries(performer)
    metrics = evaluation.measure(explainer, collected, geometries, top_k, landmark_names, names)
    rows = metrics["filters"]["explainer"]
    shown = _most_stable_first(rows)[:max_filters]
    strongest = _strongest_images(collected.values["part_maps"],
                                  evaluation.filter_images(collected, "part_maps",
                                                           explainer.negative_class), per_filter)
    probe_count = min(probe_images, len(collected.labels))
    wanted = set(np.concatenate([strongest[f] for f in shown] + [np.arange(probe_count)]).tolist())
    raws, probe_inputs = _read_images(dataset, wanted, probe_count)
    peaks = evaluation.peak_xy(collected, "part_maps", geometries["part_maps"])
    body = [
        _header(metrics, names),
        _how_to_read(),
        _side_by_side(metrics),
        _filters_per_part_and_category(rows, landmark_names),
        _comparisons(metrics, comparisons or {}),
        _filters(out_dir, rows, shown, strongest, raws, peaks, collected, landmark_names,
                 per_filter),
        _probes(out_dir, explainer, collected, rows, [raws[i] for i in range(probe_count)],
                probe_inputs, geometries["part_maps"], names),
    ]
    page = ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>Explainer report</title><style>{_CSS}</style></head><body>\n"
            + "\n".join(body) + "\n</body></html>\n")
    path = os.path.join(out_dir, REPORT_FILE)
    with open(path, "w", encoding="utf-8") as f:
        f.write(page)
    return path


def load_comparisons(metrics_path):
    """The explainers' results in an evaluation's metrics.json (tools/evaluate.py writes it), by
    name, for write_report's `comparisons`; {} when the file does not exist."""
    if not os.path.exists(metrics_path):
        return {}
    with open(metrics_path, encoding="utf-8") as f:
        metrics = json.load(f)
    return {name: values for name, values in metrics.items()
            if isinstance(values, dict) and "p" in values}


# ---- data ------------------------------------------------------------------------------------
def _most_stable_first(rows):
    """Filter indices by instability; dead and unmeasured filters last (a filter that never
    fires "never moves", which says nothing about parts)."""
    key = [np.inf if row["dead"] or row["instability"] is None else row["instability"]
           for row in rows]
    return np.argsort(key, kind="stable")


def _strongest_images(peak_values, eligible, count):
    """[F] arrays: each filter's up to `count` images of its category where it peaks highest,
    strongest first, leaving out images where it does not fire."""
    ranked = np.argsort(-np.where(eligible, peak_values, -np.inf), axis=0, kind="stable")[:count]
    return [ranked[:, f][(peak_values[ranked[:, f], f] > 0) & eligible[ranked[:, f], f]]
            for f in range(peak_values.shape[1])]


def _read_images(dataset, indices, probe_count):
    """({index: raw uint8 image} for the given dataset positions, the performer inputs of the
    first probe_count images), in one pass over the dataset."""
    raws, probe_inputs, start = {}, [], 0
    last = max(indices, default=-1)
    for data in dataset:
        if start > last:
            break
        batch_raws = data["raw"].numpy()
        for i in range(len(batch_raws)):
            if start + i in indices:
                raws[start + i] = batch_raws[i]
        if start < probe_count:
            probe_inputs.append(data["image"].numpy()[:probe_count - start])
        start += len(batch_raws)
    return raws, np.concatenate(probe_inputs) if probe_inputs else None


# ---- text helpers ----------------------------------------------------------------------------
def _e(value):
    return html.escape(str(value))


def _number(value, digits=4):
    return "-" if value is None or not np.isfinite(value) else f"{value:.{digits}f}"


def _points(value):
    """An accuracy difference in percentage points, signed."""
    return "-" if value is None or not np.isfinite(value) else f"{100 * value:+.2f}"


def _per_part(counts):
    """"torso 56, neck 1, none 7": the parts filters detect, "none" last."""
    return ", ".join(f"{part} {count}" for part, count in counts.items() if count) or "-"


# ---- sections --------------------------------------------------------------------------------
def _header(metrics, class_names):
    rows = [("p (share of the interpretable track)", _number(metrics["p"], 3)),
            ("performer accuracy", _number(metrics["performer_accuracy"], 3)),
            ("reconstructed accuracy (performer's head on the explainer's output)",
             _number(metrics["reconstructed_accuracy"], 3)),
            ("test images", str(metrics["num_images"]))]
    return ("<h1>Explainer report</h1>"
            f"<p class=\"meta\">Categories: {_e(', '.join(class_names))}</p>"
            + _table(("", "value"), rows))


def _how_to_read():
    radius = int(round(100 * part_metrics.RADIUS_FRACTION))
    return (
        "<h2>How to read these numbers</h2><div class=\"howto\">"
        "<p><b>Location instability</b>: how much the distance from a filter's peak to each "
        "landmark varies over the images where the filter fires most, divided by the image "
        "diagonal. Lower is better, but it means something only below the <b>fixed-point "
        "floor</b>, the score of a point that stays on one pixel of every image: on "
        "object-centred crops, standing still already scores well.</p>"
        f"<p><b>Hit rate</b>: the share of a filter's strongest images whose peak lies within "
        f"{radius}% of the image diagonal of a landmark. A filter <b>detects</b> a landmark when "
        f"its hit rate is at least {part_metrics.DETECT_HIT:g} and at least "
        f"{part_metrics.DETECT_MARGIN:g} above that of the best fixed pixel; its <b>part</b> is "
        "the landmark it hits most among those. <b>Part coverage</b>: the share of landmarks "
        "that some filter detects (1 is best).</p>"
        "<p><b>Duplicates</b>: the share of filters that are dead (silent on "
        f"{100 * part_metrics.DEAD_FRACTION:.0f}% of their category's images) or have a "
        f"<b>twin</b>, a filter of the same category whose peak strengths correlate "
        f"{part_metrics.TWIN_CORRELATION:g} or more with theirs; 0 is best.</p>"
        "<p><b>p</b>: how much the explainer relies on its part filters rather than on its "
        "unconstrained track; near 1 means the decoder relies on the part filters. "
        "<b>Reconstructed error increase</b>: points of accuracy lost when the performer's head "
        "classifies from the explainer's reconstruction instead of from its own features; near "
        "0 is best. docs/method.md explains the method and these measures in full.</p></div>")


def _side_by_side(metrics):
    floor = _number(metrics["instability_fixed_point"])
    performer_error = _number(metrics["performer_error"])
    rows = [
        ("location instability", _number(metrics["instability_explainer"]),
         _number(metrics.get("instability_performer_top")),
         _number(metrics.get("instability_performer_target")),
         "lower; tracks parts only if below the fixed-point floor"),
        ("fixed-point floor", floor, floor, floor,
         "the instability of a point that never moves (same images for every map)"),
        ("part coverage", _number(metrics.get("part_coverage"), 2),
         _number(metrics.get("part_coverage_top"), 2), "-", "higher; 1 = every landmark detected"),
        ("duplicates", _number(metrics.get("duplicate_filters"), 2),
         _number(metrics.get("duplicate_filters_top"), 2), "-",
         "lower; 0 = no filter dead or twinned"),
        ("filters per part", _per_part(metrics.get("filters_per_part", {})),
         _per_part(metrics.get("filters_per_part_top", {})), "-",
         "many parts, few \"none\""),
        ("p", _number(metrics["p"], 3), "-", "-", "near 1: the decoder relies on the part filters"),
        ("classification error", _number(metrics["reconstructed_error"]), performer_error,
         performer_error, "the explainer's (through the performer's head) near the performer's"),
        ("reconstructed error increase (points)",
         _points(metrics["reconstructed_error_increase"]), "-", "-", "near 0"),
    ]
    return ("<h2>Explainer vs performer</h2>"
            "<p class=\"note\">The explainer's part filters (conv-interp-2) beside the "
            "performer's top conv layer and the target layer the explainer reads, measured on "
            "the same test images.</p>"
            + _table(("measure", "explainer conv-interp-2", "performer top conv",
                      "performer target layer", "good values"), rows, reading_column=True))


def _filters_per_part_and_category(rows, landmark_names):
    columns = landmark_names + ["none"]
    categories = list(dict.fromkeys(row["category"] for row in rows))

    def counts(members):
        return ([sum(row["part"] == part for row in members) for part in columns]
                + [len(members), sum(row["dead"] for row in members),
                   sum(bool(row["twins"]) for row in members)])

    table = [(category, *counts([row for row in rows if row["category"] == category]))
             for category in categories]
    table.append(("all categories", *counts(rows)))
    return ("<h2>Filters per part and category</h2>"
            "<p class=\"note\">How many explainer filters detect each landmark (\"none\": no "
            "landmark), by the category each filter is measured on, with the dead ones and "
            "those that have a twin.</p>"
            + _table(["category"] + columns + ["filters", "dead", "with a twin"], table))


def _comparisons(metrics, comparisons):
    others = {name: values for name, values in comparisons.items() if name != "explainer"}
    if not others:
        return ""
    method_training = comparisons.get("explainer", {}).get("training")
    rows = [("this explainer (the method)", *_comparison_values(metrics, method_training),
             _method_sentence(metrics))]
    for name, values in others.items():
        label = COMPARISONS[name][0] if name in COMPARISONS else name
        rows.append((label, *_comparison_values(values, values.get("training")),
                     _comparison_sentence(name, metrics, values)))
    header = ("model", "location instability", "fixed-point floor", "part coverage",
              "duplicates", "p", "error increase (points)", "epochs", "what this row means")
    return ("<h2>Method vs baseline and ablations</h2>"
            "<p class=\"note\">Each row is an explainer trained on the same performer and "
            "measured on the same test images; compare every row with the method's.</p>"
            + _table(header, rows, reading_column=True))


def _comparison_values(values, training):
    return (_number(values.get("instability_explainer")),
            _number(values.get("instability_fixed_point")),
            _number(values.get("part_coverage"), 2), _number(values.get("duplicate_filters"), 2),
            _number(values.get("p"), 3), _points(values.get("reconstructed_error_increase")),
            str(training["epochs_trained"]) if training else "-")


def _method_sentence(metrics):
    value, floor = metrics["instability_explainer"], metrics["instability_fixed_point"]
    if not (np.isfinite(value) and np.isfinite(floor)):
        return "The explainer this report is about; its instability could not be measured."
    if value < floor:
        return (f"The explainer this report is about: its instability ({value:.4f}) is below the "
                f"fixed-point floor ({floor:.4f}), so its filters follow parts better than a "
                "point that never moves.")
    return (f"The explainer this report is about: its instability ({value:.4f}) is not below the "
            f"fixed-point floor ({floor:.4f}), so its filters follow parts no better than a "
            "point that never moves.")


# A method instability less than 1% below another explainer's is reported as "not lower".
SAME_INSTABILITY = 0.01


def _comparison_sentence(name, metrics, values):
    method, other = metrics["instability_explainer"], values.get("instability_explainer")
    if name not in COMPARISONS:
        return (f"Another explainer ({name}) measured on the same test images; compare each "
                "column with the method's row.")
    _, what, better, not_better = COMPARISONS[name]
    if other is None or not (np.isfinite(method) and np.isfinite(other)):
        return f"This is {what}; its instability could not be compared with the method's."
    if method < other * (1 - SAME_INSTABILITY):
        # A lower number claims part tracking only where the method's filters detect landmarks, and
        # no fewer than the other's (docs/method.md, "Measuring parts").
        coverage, other_coverage = metrics.get("part_coverage"), values.get("part_coverage")
        if coverage is not None and coverage == 0:
            return (f"This is {what}: the method's instability is lower ({method:.4f} vs "
                    f"{other:.4f}), but none of its filters detects a landmark (coverage 0), so "
                    "the lower number does not show that its filters track parts.")
        if coverage is not None and other_coverage is not None and coverage < other_coverage:
            return (f"This is {what}: the method's instability is lower ({method:.4f} vs "
                    f"{other:.4f}), but its filters detect fewer landmarks (coverage "
                    f"{coverage:.2f} vs {other_coverage:.2f}), so neither tracks parts better "
                    "on both counts.")
        return (f"This is {what}: the method's lower instability ({method:.4f} vs "
                f"{other:.4f}) means {better}.")
    return (f"This is {what}: the method's instability is not lower ({method:.4f} vs "
            f"{other:.4f}), so {not_better}.")


def _filters(out_dir, rows, shown, strongest, raws, peaks, collected, landmark_names,
             per_filter):
    radius = part_metrics.hit_radius(collected.image_size)
    shown_set = set(int(f) for f in shown)
    sections = []
    for f in shown:
        row = rows[f]
        images = strongest[f]
        picture = "<p class=\"note\">It does not fire on its category's images.</p>"
        if len(images):
            name = f"filter_{f:03d}.png"
            strip = _thumbnail_strip([raws[i] for i in images], peaks[images, f],
                                     collected.landmarks[images], radius)
            strip.save(os.path.join(out_dir, name))
            picture = (f"<img src=\"{name}\" alt=\"the {len(images)} strongest images of filter "
                       f"{f} with its peak and the landmarks marked\">")
        part = "no part" if row["part"] == "none" else row["part"]
        sections.append(
            f"<div class=\"filter\" id=\"filter-{f}\"><h3>Filter {f}: {_e(part)}</h3>"
            f"<div class=\"facts\"><div class=\"meta\">category: {_e(row['category'])}<br>"
            f"part: {_e(part)}<br>{_twins(row, shown_set)}<br>"
            f"instability: {_number(row['instability'])}</div>"
            + _landmark_table(row, landmark_names) + "</div>" + picture + "</div>")
    legend = "".join(f"<span class=\"dot\" style=\"--c: rgb{colour}\">{_e(name)}</span>"
                     for name, colour in zip(landmark_names, _landmark_colours(landmark_names)))
    return ("<h2>Part filters (conv-interp-2)</h2>"
            f"<p class=\"note\">{len(shown)} of {len(rows)} filters, most stable first (dead "
            "ones last). Each: "
            "the category it is measured on, the part it detects, its twins, and per landmark "
            "its hit rate beside the best fixed pixel's, the mean offset of its peak from the "
            "landmark (dx right, dy down, in input pixels) and the spread of that distance, "
            "over its strongest images (\"-\" where none has the landmark). Below, its "
            f"{per_filter} strongest images of its category, whole: the white cross is its peak, "
            "the white ring the hit radius around it, the dots the image's landmarks:</p>"
            f"<div class=\"legend\">{legend}<span>+ filter peak</span>"
            "<span>&#9675; hit radius</span></div>" + "".join(sections))


def _twins(row, shown):
    """The filter's twins, linked to their sections when those are shown."""
    if row["dead"]:
        return "dead (silent on almost all its images)"
    if not row["twins"]:
        return "no twin"
    return "twins: " + ", ".join(f"<a href=\"#filter-{t}\">{t}</a>" if t in shown else str(t)
                                 for t in row["twins"])


def _landmark_table(row, landmark_names):
    """Per landmark: hit rate, best fixed pixel's hit rate, mean offset and distance spread."""
    lines = []
    for name, colour in zip(landmark_names, _landmark_colours(landmark_names)):
        offset = row["offset"][name]
        emphasis = " class=\"part\"" if name == row["part"] else ""
        lines.append(
            f"<tr{emphasis}>"
            f"<td><span class=\"dot\" style=\"--c: rgb{colour}\">{_e(name)}</span></td>"
            f"<td class=\"num\">{_number(row['hit'][name], 2)}</td>"
            f"<td class=\"num\">{_number(row['fixed'][name], 2)}</td>"
            f"<td class=\"num\">{'-' if offset is None else f'{offset[0]:+.1f}, {offset[1]:+.1f}'}"
            f"</td><td class=\"num\">{_number(row['spread'][name], 1)}</td></tr>")
    return ("<table><tr><th>landmark</th><th>hit rate</th><th>best fixed pixel</th>"
            "<th>offset dx, dy (px)</th><th>spread (px)</th></tr>" + "".join(lines) + "</table>")


def _probes(out_dir, explainer, collected, rows, raws, images, geometry, class_names):
    """The first images of the dataset (the first ones collected, too), as in the paper's Fig. 5."""
    if not raws:
        return ""
    contributions = evaluation.part_contributions(explainer, images)
    cams = visualize.explainer_grad_cam(explainer, images)
    part_maps = evaluation.measured_maps(explainer, images)[0]["part_maps"].numpy()
    blocks = []
    for i, raw in enumerate(raws):
        top = np.argsort(-contributions[i], kind="stable")[:TOP_CONTRIBUTORS]
        overlaid = visualize.strongest_first(part_maps[i].max(axis=(0, 1)),
                                             top[:OVERLAID_CONTRIBUTORS])  # colour order
        colours = dict(zip(overlaid, visualize.PALETTE.astype(int)))
        image = _enlarged(raw, PROBE_SIDE)
        scale = image.width / raw.shape[1]
        marked = image.copy()
        _draw_landmarks(ImageDraw.Draw(marked), collected.landmarks[i], scale)
        figures = [_figure(out_dir, f"image_{i}.png", marked, "image, landmarks marked"),
                   _figure(out_dir, f"parts_{i}.png",
                           _part_overlay(image, part_maps[i], overlaid, geometry, scale),
                           "top contributing filters, peaks marked")]
        for source, cam in cams.items():
            figures.append(_figure(out_dir, f"cam_{source}_{i}.png",
                                   visualize.heatmap_overlay(np.asarray(image), cam[i]),
                                   f"Grad-CAM, {source}"))
        bars = _bars([(f"filter {f} ({rows[f]['category']}, "
                       f"{'no part' if rows[f]['part'] == 'none' else rows[f]['part']})",
                       contributions[i][f], colours.get(f)) for f in top])
        blocks.append(
            f"<div class=\"probe\">{figures[0]}{figures[1]}<div class=\"bars\"><b>Predicted: "
            f"{_e(class_names[collected.performer_predictions[i]])}</b> (label: "
            f"{_e(class_names[collected.labels[i]])})<p class=\"note\">Contribution of each filter "
            f"to this class score; a swatch gives its colour on the image.</p>{bars}</div>"
            + "".join(figures[2:]) + "</div>")
    return ("<h2>Part contributions</h2>"
            "<p class=\"note\">Gradient x activation of the predicted class score with respect to "
            "each interpretable filter, through the decoder and the performer's head; the "
            f"{OVERLAID_CONTRIBUTORS} strongest of the top contributors are drawn on the image, "
            "each map scaled to its own peak, with a cross on the peak. Grad-CAM compares where "
            "the explainer's part maps and the performer's top conv support the predicted "
            "class.</p>" + "".join(blocks))


# ---- pictures --------------------------------------------------------------------------------
def _landmark_colours(landmark_names):
    return [LANDMARK_COLOURS[k % len(LANDMARK_COLOURS)] for k in range(len(landmark_names))]


def _enlarged(raw, side):
    """The image as a PIL image whose longer side is `side` (bicubic)."""
    image = Image.fromarray(np.asarray(raw, np.uint8))
    scale = side / max(image.size)
    return image.resize((round(image.width * scale), round(image.height * scale)), Image.BICUBIC)


def _display(point, scale):
    """Input pixel (x, y) -> pixel of the enlarged image (pixel p covers [p - 0.5, p + 0.5])."""
    return tuple((np.asarray(point, np.float64) + 0.5) * scale)


def _draw_cross(draw, centre, colour, arm=7):
    """A plus sign with a black outline, visible on any background."""
    x, y = centre
    for width, fill in ((5, OUTLINE_COLOUR), (3, colour)):
        draw.line([(x - arm, y), (x + arm, y)], fill=fill, width=width)
        draw.line([(x, y - arm), (x, y + arm)], fill=fill, width=width)


def _draw_landmarks(draw, landmarks, scale, radius=4):
    for k, point in enumerate(landmarks):
        if np.isnan(point).any():
            continue
        x, y = _display(point, scale)
        draw.ellipse([x - radius, y - radius, x + radius, y + radius],
                     fill=LANDMARK_COLOURS[k % len(LANDMARK_COLOURS)], outline=OUTLINE_COLOUR)


def _thumbnail(raw, peak, landmarks, radius):
    """One whole image enlarged to THUMBNAIL_SIDE with the hit-radius ring and the cross on the
    filter's peak drawn over the image's landmarks."""
    image = _enlarged(raw, THUMBNAIL_SIDE)
    scale = image.width / raw.shape[1]
    draw = ImageDraw.Draw(image)
    _draw_landmarks(draw, landmarks, scale)
    x, y = (int(round(v)) for v in _display(peak, scale))
    ring = radius * scale
    draw.ellipse([x - ring, y - ring, x + ring, y + ring], outline=PEAK_COLOUR, width=1)
    _draw_cross(draw, (x, y), PEAK_COLOUR)
    return image


def _thumbnail_strip(raws, peaks, landmarks, radius):
    """The thumbnails of one filter side by side, THUMBNAIL_GAP white pixels apart."""
    thumbnails = [_thumbnail(raw, peak, points, radius)
                  for raw, peak, points in zip(raws, peaks, landmarks)]
    width = sum(t.width for t in thumbnails) + THUMBNAIL_GAP * (len(thumbnails) - 1)
    strip = Image.new("RGB", (width, max(t.height for t in thumbnails)), (255, 255, 255))
    left = 0
    for thumbnail in thumbnails:
        strip.paste(thumbnail, (left, 0))
        left += thumbnail.width + THUMBNAIL_GAP
    return strip


def _part_overlay(image, part_maps, filters, geometry, scale):
    """The chosen filters' maps over the grey, dimmed image, each in its PALETTE colour (in the
    given order): smoothly upsampled, scaled to its own peak, opaque up to OVERLAY_ALPHA where
    it is strongest, and a cross in its colour on its peak cell."""
    grey = np.asarray(image.convert("L"), np.float32)[..., None] * BACKGROUND_DIMMING
    maps = np.maximum(np.asarray(part_maps, np.float32)[..., filters], 0.0)
    peaks = maps.max(axis=(0, 1))
    upsampled = tf.image.resize(maps, (image.height, image.width), method="bicubic").numpy()
    strength = np.clip(np.divide(upsampled, peaks, out=np.zeros_like(upsampled),
                                 where=peaks > 0), 0.0, 1.0)  # [H, W, k]
    colours = visualize.PALETTE[np.arange(len(filters)) % len(visualize.PALETTE)]
    strongest = strength.argmax(axis=-1)
    alpha = OVERLAY_ALPHA * strength.max(axis=-1, keepdims=True)
    blended = grey * (1 - alpha) + colours[strongest] * alpha
    overlay = Image.fromarray(np.clip(np.rint(blended), 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(overlay)
    cells, _ = map_peaks(maps[None])
    for j, cell in enumerate(cells[0]):
        if peaks[j] > 0:
            row, col = geometry.cell_to_pixel(cell)
            _draw_cross(draw, _display((col, row), scale), tuple(int(c) for c in colours[j]))
    return overlay


# ---- HTML helpers ----------------------------------------------------------------------------
def _table(header, rows, reading_column=False):
    """A table whose first column is a label; with reading_column the last is a sentence."""
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = []
    for label, *values in rows:
        reading = values.pop() if reading_column else None
        body.append("<tr><td>" + _e(label) + "</td>"
                    + "".join(f"<td class=\"num\">{_e(v)}</td>" for v in values)
                    + (f"<td class=\"reading\">{_e(reading)}</td>" if reading_column else "")
                    + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def _bars(items):
    """A horizontal bar per (label, value, swatch RGB or None), scaled to the largest magnitude."""
    scale = max((abs(float(v)) for _, v, _ in items), default=0.0) or 1.0
    rows = []
    for label, value, swatch in items:
        value = float(value)
        colour = "transparent" if swatch is None else "rgb({}, {}, {})".format(*swatch)
        rows.append(
            f"<div class=\"bar-row\"><span class=\"swatch\" style=\"background:{colour}\"></span>"
            f"<span class=\"bar-label\">{_e(label)}</span>"
            f"<div class=\"bar-track\"><div class=\"bar {'pos' if value >= 0 else 'neg'}\" "
            f"style=\"width:{100 * abs(value) / scale:.1f}%\"></div></div>"
            f"<span class=\"bar-value\">{value:.3g}</span></div>")
    return "".join(rows)


def _figure(out_dir, name, image, caption):
    """Saves a PIL or uint8 numpy image as PNG and returns its <figure>."""
    if not isinstance(image, Image.Image):
        image = Image.fromarray(np.asarray(image, np.uint8))
    image.save(os.path.join(out_dir, name))
    return (f"<figure><img src=\"{name}\" alt=\"{_e(caption)}\">"
            f"<figcaption>{_e(caption)}</figcaption></figure>")
