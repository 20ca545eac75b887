"""The HTML report: per-filter facts and whole-image thumbnails that match the measurements, summary
and comparison tables, readable probe overlays, escaped text, and the tool that writes it."""

import html
import json
import os
import re

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from tests.test_tools import TINY, _tool
from tests.tiny import tiny_performer
from tf_explainer import evaluation, report, visualize
from tf_explainer.build import build_explainer, initialize_statistics
from tf_explainer.metrics.instability import map_peaks

CLASS_NAMES = ["background", "<b>bird</b>", "cat & dog"]
LANDMARKS = ["head", "tail"]
PROBES = 3
PER_FILTER = 4
TWINS = (0, 1)  # conv-interp-2 filter 1 is made a copy of filter 0
DEAD = 2  # and filter 2 never fires


def _landmark_batches(count=48, batch_size=16, seed=0):
    """{"image", "raw", "label", "landmarks"} batches: a class-coloured blob, its corners landmarks."""
    rng = np.random.default_rng(seed)
    raws = rng.integers(0, 60, (count, 32, 32, 3)).astype(np.uint8)
    labels = rng.integers(0, len(CLASS_NAMES), count).astype(np.int32)
    landmarks = np.full((count, len(LANDMARKS), 2), np.nan, np.float32)
    for i, label in enumerate(labels):
        x, y = rng.integers(2, 22, 2)
        raws[i, y:y + 8, x:x + 8, label] = 230
        landmarks[i, 0] = (x, y)
        if i % 3:  # some images lack the second landmark
            landmarks[i, 1] = (x + 7, y + 7)
    return tf.data.Dataset.from_tensor_slices(
        {"image": raws.astype(np.float32) / 255.0, "raw": raws, "label": labels,
         "landmarks": landmarks}).batch(batch_size)


def _explainer(performer, data, **options):
    explainer = build_explainer(performer, **options)
    initialize_statistics(explainer, data)
    return explainer


def _with_twins_and_a_dead_filter(explainer):
    kernel, bias = explainer.conv_interp_2.get_weights()
    kernel[..., TWINS[1]], bias[TWINS[1]] = kernel[..., TWINS[0]], bias[TWINS[0]]
    kernel[..., DEAD], bias[DEAD] = 0.0, -1.0
    explainer.conv_interp_2.set_weights([kernel, bias])
    return explainer


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """The report of a tiny explainer with its baseline and one ablation, and one without."""
    performer = tiny_performer(num_classes=3, class_names=CLASS_NAMES)
    data = _landmark_batches()
    explainer = _with_twins_and_a_dead_filter(_explainer(performer, data))
    geometries = evaluation.performer_geometries(performer)
    metrics = evaluation.evaluate(explainer, data, geometries, landmark_names=LANDMARKS,
                                  class_names=CLASS_NAMES)
    comparisons = {
        "explainer": {**metrics, "training": {"epochs_trained": 7}},
        "explainer_cls": {**evaluation.evaluate(
            _explainer(performer, data, objective="classification", category_source="label"),
            data, geometries, landmark_names=LANDMARKS, class_names=CLASS_NAMES),
            "training": {"epochs_trained": 3}},
        "no_masks": evaluation.evaluate(_explainer(performer, data, use_masks=False), data,
                                        geometries, landmark_names=LANDMARKS,
                                        class_names=CLASS_NAMES),
    }
    out_dir = str(tmp_path_factory.mktemp("report"))
    path = report.write_report(explainer, performer, data, out_dir, CLASS_NAMES, LANDMARKS,
                               probe_images=PROBES, per_filter=PER_FILTER,
                               comparisons=comparisons)
    plain_dir = str(tmp_path_factory.mktemp("plain"))
    plain = report.write_report(explainer, performer, data, plain_dir, CLASS_NAMES, LANDMARKS,
                                probe_images=0, per_filter=PER_FILTER, max_filters=3)
    return {"path": path, "page": open(path, encoding="utf-8").read(),
            "plain": open(plain, encoding="utf-8").read(), "metrics": metrics,
            "comparisons": comparisons, "data": data, "explainer": explainer,
            "collected": evaluation.collect(explainer, data), "geometries": geometries}


def _sections(page):
    """{filter index: its HTML section}."""
    return {int(f): body for f, body in re.findall(
        r'<div class="filter" id="filter-(\d+)">(.*?)(?=<div class="filter" id=|<h2>|</body>)',
        page, re.S)}


def _row(page, label):
    """The cells after `label` in the table row that starts with it."""
    row = re.search(r"<tr><td>" + re.escape(html.escape(label)) + r"</td>(.*?)</tr>", page, re.S)
    assert row, label
    return [html.unescape(cell) for cell in re.findall(r"<td[^>]*>(.*?)</td>", row.group(1))]


def test_every_image_the_page_links_is_a_png_beside_it(written):
    sources = re.findall(r'<img src="([^"]+)"', written["page"])
    firing = sum(not row["dead"] for row in written["metrics"]["filters"]["explainer"])
    assert len(sources) == firing + PROBES * 4  # a strip per firing filter; 4 figures per probe
    for source in sources:
        assert "/" not in source
        with Image.open(os.path.join(os.path.dirname(written["path"]), source)) as image:
            assert image.format == "PNG"
            image.verify()


def test_each_filter_shows_its_category_part_offsets_hit_rates_and_twins(written):
    sections = _sections(written["page"])
    rows = written["metrics"]["filters"]["explainer"]
    assert sorted(sections) == list(range(len(rows)))
    assert any(row["part"] != "none" for row in rows)  # the "part" branch is exercised
    for f, row in enumerate(rows):
        section = sections[f]
        part = "no part" if row["part"] == "none" else row["part"]
        assert f"category: {html.escape(row['category'])}<br>part: {part}<br>" in section
        for name in LANDMARKS:
            cells = re.search(rf">{name}</span></td>(.*?)</tr>", section, re.S).group(1)
            values = re.findall(r'<td class="num">([^<]*)</td>', cells)
            hit, offset = row["hit"][name], row["offset"][name]
            assert values[0] == ("-" if hit is None else f"{hit:.2f}")
            assert values[2] == ("-" if offset is None else f"{offset[0]:+.1f}, {offset[1]:+.1f}")
    assert rows[TWINS[0]]["twins"] == [TWINS[1]] and rows[TWINS[1]]["twins"] == [TWINS[0]]
    assert f'twins: <a href="#filter-{TWINS[1]}">{TWINS[1]}</a>' in sections[TWINS[0]]
    assert rows[DEAD]["dead"] and "dead (silent" in sections[DEAD]
    assert "does not fire" in sections[DEAD] and "<img" not in sections[DEAD]
    assert "no twin" in "".join(sections[f] for f, row in enumerate(rows)
                                if not row["twins"] and not row["dead"])
    order = [int(f) for f in re.findall(r'<div class="filter" id="filter-(\d+)">',
                                        written["page"])]
    assert order[-1] == DEAD  # a filter that never fires "never moves": listed last


def test_thumbnails_are_whole_images_with_the_peak_and_the_landmarks_drawn(written):
    collected, page = written["collected"], written["page"]
    out_dir = os.path.dirname(written["path"])
    peaks = evaluation.peak_xy(collected, "part_maps", written["geometries"]["part_maps"])
    eligible = evaluation.filter_images(collected, "part_maps",
                                        written["explainer"].negative_class)
    raws = np.concatenate([batch["raw"].numpy() for batch in written["data"]])
    values = collected.values["part_maps"]
    scale = report.THUMBNAIL_SIDE / 32
    landmark_dots = 0
    firing = [f for f, row in enumerate(written["metrics"]["filters"]["explainer"])
              if not row["dead"]]
    for f in firing[:3]:
        with Image.open(os.path.join(out_dir, f"filter_{f:03d}.png")) as strip:
            strip = np.asarray(strip.convert("RGB"))
        assert f'src="filter_{f:03d}.png"' in page
        top = [i for i in np.argsort(-np.where(eligible[:, f], values[:, f], -np.inf),
                                     kind="stable")[:PER_FILTER] if values[i, f] > 0]
        side, gap = report.THUMBNAIL_SIDE, report.THUMBNAIL_GAP
        assert side >= 128 and strip.shape == (side, len(top) * (side + gap) - gap, 3)
        for j, i in enumerate(top):
            thumbnail = strip[:, j * (side + gap):j * (side + gap) + side]
            x, y = np.rint((peaks[i, f] + 0.5) * scale).astype(int)
            assert tuple(thumbnail[y, x]) == report.PEAK_COLOUR  # the cross on the peak
            assert tuple(thumbnail[y, x + 3]) == report.PEAK_COLOUR
            # The whole image, enlarged (most pixels untouched by the marks).
            whole = np.asarray(Image.fromarray(raws[i]).resize((side, side), Image.BICUBIC))
            assert np.mean(np.all(thumbnail == whole, axis=-1)) > 0.7
            ring = report.part_metrics.hit_radius((32, 32)) * scale
            for k, point in enumerate(collected.landmarks[i]):
                if np.isnan(point).any():
                    continue
                centre = np.rint((point + 0.5) * scale).astype(int)
                distance = np.hypot(*(centre - (x, y)))
                if distance < 10 or abs(distance - ring) < 6:
                    continue  # under the cross or the ring
                assert tuple(thumbnail[centre[1], centre[0]]) == report.LANDMARK_COLOURS[k]
                landmark_dots += 1
    assert landmark_dots > 0
    legend = re.search(r'<div class="legend">(.*?)</div>', page).group(1)
    for colour, name in zip(report.LANDMARK_COLOURS, LANDMARKS):  # each landmark in its colour
        assert f'<span class="dot" style="--c: rgb{colour}">{name}</span>' in legend


def test_summary_tables_count_what_the_metrics_count(written):
    metrics, page = written["metrics"], written["page"]
    rows = metrics["filters"]["explainer"]
    per_part = metrics["filters_per_part"]
    all_row = _row(page, "all categories")
    assert all_row == [str(per_part[name]) for name in LANDMARKS + ["none"]] + [
        str(len(rows)), str(sum(row["dead"] for row in rows)),
        str(sum(bool(row["twins"]) for row in rows))]
    for category in {row["category"] for row in rows}:
        counts = _row(page, category)
        members = [row for row in rows if row["category"] == category]
        assert counts[len(LANDMARKS) + 1] == str(len(members))
    assert _row(page, "location instability") == [
        f"{metrics['instability_explainer']:.4f}", f"{metrics['instability_performer_top']:.4f}",
        f"{metrics['instability_performer_target']:.4f}",
        "lower; tracks parts only if below the fixed-point floor"]
    assert _row(page, "fixed-point floor")[:3] == [f"{metrics['instability_fixed_point']:.4f}"] * 3
    assert _row(page, "part coverage")[:2] == [f"{metrics['part_coverage']:.2f}",
                                               f"{metrics['part_coverage_top']:.2f}"]
    assert _row(page, "duplicates")[:2] == [f"{metrics['duplicate_filters']:.2f}",
                                            f"{metrics['duplicate_filters_top']:.2f}"]
    assert _row(page, "p")[0] == f"{metrics['p']:.3f}"
    assert _row(page, "reconstructed error increase (points)")[0] == (
        f"{100 * metrics['reconstructed_error_increase']:+.2f}")
    assert "How to read these numbers" in page and "lower is better" in page.lower()


def test_comparison_rows_say_what_they_mean_and_are_absent_without_comparisons(written):
    metrics, comparisons, page = written["metrics"], written["comparisons"], written["page"]
    method = _row(page, "this explainer (the method)")
    assert method[0] == f"{metrics['instability_explainer']:.4f}" and method[6] == "7"
    assert "fixed-point floor" in method[7]
    for name, label in (("explainer_cls", "Explainer+cls (baseline)"), ("no_masks", "no masks")):
        row = _row(page, label)
        other = comparisons[name]["instability_explainer"]
        assert row[0] == f"{other:.4f}"
        assert row[6] == ("3" if name == "explainer_cls" else "-")
        _, what, _, _ = report.COMPARISONS[name]
        assert row[7].startswith(f"This is {what}")
        assert row[7] == report._comparison_sentence(name, metrics, comparisons[name])
        assert re.sub(r"\d\.\d", "", row[7]).count(".") == 1  # one sentence
    assert "lambda 0 (no filter loss)" not in page  # not given, not shown
    plain = written["plain"]
    assert "Method vs baseline and ablations" not in plain and "(the method)" not in plain
    assert plain.count('<div class="filter" id=') == 3 and "Part contributions" not in plain


@pytest.mark.parametrize("method, other, verdict", [
    ((0.040, 0.50), (0.050, 0.50), "better"),          # lower, same landmarks
    ((0.040, 0.75), (0.050, 0.50), "better"),          # lower, more landmarks
    ((0.0496, 0.50), (0.050, 0.50), "not_better"),     # within 1%: not lower
    ((0.060, 0.75), (0.050, 0.25), "not_better"),      # higher
    ((0.040, 0.0), (0.050, 0.0), "no landmark"),       # lower, but no filter detects a part
    ((0.040, 0.25), (0.050, 0.50), "fewer landmarks"),  # lower, but fewer parts
])
def test_comparison_sentence_claims_part_tracking_only_with_coverage(method, other, verdict):
    metrics = {"instability_explainer": method[0], "part_coverage": method[1]}
    values = {"instability_explainer": other[0], "part_coverage": other[1]}
    sentence = report._comparison_sentence("no_filter_loss", metrics, values)
    _, what, better, not_better = report.COMPARISONS["no_filter_loss"]
    assert sentence.startswith(f"This is {what}")
    expected = {"better": better, "not_better": not_better,
                "no landmark": "none of its filters detects a landmark (coverage 0)",
                "fewer landmarks": f"fewer landmarks (coverage {method[1]:.2f} vs {other[1]:.2f})"}
    assert expected[verdict] in sentence
    assert (better in sentence) == (verdict == "better")


def test_load_comparisons_reads_the_explainers_of_an_evaluation(written, tmp_path):
    path = tmp_path / "metrics.json"
    path.write_text(json.dumps({**written["comparisons"], "part_contributions": [{"index": 0}]}))
    loaded = report.load_comparisons(str(path))
    assert sorted(loaded) == ["explainer", "explainer_cls", "no_masks"]
    assert loaded["no_masks"]["p"] == pytest.approx(written["comparisons"]["no_masks"]["p"])
    assert report.load_comparisons(str(tmp_path / "missing.json")) == {}


def test_probe_overlays_are_smooth_strong_and_mark_each_peak(written):
    out_dir = os.path.dirname(written["path"])
    images = next(iter(written["data"]))["image"][:PROBES]
    maps = evaluation.measured_maps(written["explainer"], images)[0]["part_maps"].numpy()
    contributions = evaluation.part_contributions(written["explainer"], images)
    geometry = written["geometries"]["part_maps"]
    scale = report.PROBE_SIDE / 32

    def display(cell):
        row, col = geometry.cell_to_pixel(cell)
        return tuple(np.rint((np.array([col, row]) + 0.5) * scale).astype(int))

    for i in range(PROBES):
        with Image.open(os.path.join(out_dir, f"parts_{i}.png")) as image:
            overlay = np.asarray(image.convert("RGB")).astype(int)
        assert overlay.shape == (report.PROBE_SIDE, report.PROBE_SIDE, 3)
        top = np.argsort(-contributions[i], kind="stable")[:report.TOP_CONTRIBUTORS]
        shown = visualize.strongest_first(maps[i].max(axis=(0, 1)),
                                          top[:report.OVERLAID_CONTRIBUTORS])
        cells = map_peaks(maps[i:i + 1, ..., shown])[0][0]
        crosses = {display(cell): visualize.PALETTE[j] for j, cell in enumerate(cells)}
        for (x, y), colour in crosses.items():  # a cross in each filter's colour on its peak
            np.testing.assert_array_equal(overlay[y, x], colour)
        # Beside the strongest filter's peak its colour dominates: the overlay is strong.
        x, y = display(cells[0])
        assert np.abs(overlay[y + 4, x + 4] - visualize.PALETTE[0]).max() < 70
    # Smooth: on a flat grey image, a map enlarged by blocks would change colour only every
    # 22 pixels along a row through its peak; upsampled smoothly it changes almost everywhere.
    flat = Image.new("RGB", (report.PROBE_SIDE, report.PROBE_SIDE), (128, 128, 128))
    strongest = int(np.argmax(maps[0].max(axis=(0, 1))))
    smooth = np.asarray(report._part_overlay(flat, maps[0], [strongest], geometry, scale))
    x, y = display(map_peaks(maps[:1, ..., [strongest]])[0][0, 0])
    row = smooth[y + 4, max(x - 22, 0):x + 22].astype(int)
    assert np.any(row[1:] != row[:-1], axis=-1).mean() > 0.5


def test_text_is_escaped_and_the_page_is_self_contained(written):
    page = written["page"]
    assert "&lt;b&gt;bird&lt;/b&gt;" in page and "cat &amp; dog" in page
    assert "<b>bird</b>" not in page
    assert "<script" not in page and "http" not in page


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("trained")
    performer_dir, explainer_dir = str(root / "performer"), str(root / "explainer")
    _tool("train_performer", *TINY, f"--model_dir={performer_dir}")
    _tool("train_explainer", *TINY, f"--performer_dir={performer_dir}", f"--model_dir={explainer_dir}")
    return performer_dir, explainer_dir


def test_report_tool_writes_the_report_of_a_trained_explainer(trained):
    performer_dir, explainer_dir = trained
    output = _tool("report", *TINY, f"--performer_dir={performer_dir}",
                   f"--model_dir={explainer_dir}", "--max_filters=3")
    path = os.path.join(explainer_dir, "report", "index.html")
    assert path in output and os.path.exists(path)
    page = open(path, encoding="utf-8").read()
    assert page.count('<div class="filter" id=') == 3 and "explainer conv-interp-2" in page
    for source in re.findall(r'<img src="([^"]+)"', page):
        assert os.path.exists(os.path.join(explainer_dir, "report", source)), source
