"""Reading a served explanation: the predicted class and the parts that support it.

Works on the outputs of serving_default / image_bytes from either client. Class and category
names are not part of TF Serving's API (its metadata has signatures only), so they come from the
exported version's assets when the caller has them (tf_explainer.export.read_class_names /
read_filter_metadata); without them classes are shown by index and categories as "?".
"""

import dataclasses
from typing import Optional, Sequence

import numpy as np

from tf_explainer.visualize import PALETTE, overlay_part_maps, strongest_first

_MARK_COLOUR_EDGE = np.array([0, 0, 0], np.uint8)


@dataclasses.dataclass(frozen=True)
class Part:
    filter: int
    category: str
    contribution: float
    peak: tuple  # (y, x) in the input image's pixels
    score: float  # the part map's peak value
    colour: str  # its colour in the overlay, as #rrggbb


@dataclasses.dataclass(frozen=True)
class Explanation:
    class_index: int
    class_name: str
    probability: float
    p: float
    parts: list


def _name(names, index, unknown):
    return names[index] if names is not None and 0 <= index < len(names) else unknown


def shown_order(outputs, parts_by_contribution, index=0):
    """The filters in the order overlay_part_maps colours them (part_scores are the map peaks)."""
    return strongest_first(np.asarray(outputs["part_scores"])[index], parts_by_contribution)


def explain(outputs, index=0, top=5, class_names: Optional[Sequence[str]] = None,
            filter_categories: Optional[Sequence[str]] = None) -> Explanation:
    """Image `index` of a batch: its class, probability, p and the `top` parts that contribute
    most to that class (each with its overlay colour)."""
    if top < 1:
        raise ValueError(f"top must be at least 1, got {top}.")
    class_index = int(outputs["classes"][index])
    contributions = np.asarray(outputs["part_contributions"])[index]
    chosen = np.argsort(-contributions, kind="stable")[:top]
    colours = {int(f): "#%02x%02x%02x" % tuple(PALETTE[i % len(PALETTE)].astype(int))
               for i, f in enumerate(shown_order(outputs, chosen, index))}
    parts = [Part(filter=int(f), category=_name(filter_categories, int(f), "?"),
                  contribution=float(contributions[f]),
                  peak=tuple(float(v) for v in outputs["part_peaks"][index, f]),
                  score=float(outputs["part_scores"][index, f]), colour=colours[int(f)])
             for f in chosen]
    return Explanation(class_index=class_index,
                       class_name=_name(class_names, class_index, f"class {class_index}"),
                       probability=float(outputs["probabilities"][index, class_index]),
                       p=float(outputs["p"][index]), parts=parts)


def format_explanation(explanation: Explanation) -> str:
    lines = [f"class: {explanation.class_name} (index {explanation.class_index}), "
             f"probability {explanation.probability:.3f}; p = {explanation.p:.3f}",
             f"top {len(explanation.parts)} parts by contribution to {explanation.class_name}:",
             f"  {'filter':>6}  {'category':<16} {'contribution':>12}  {'peak (y, x)':>16}  "
             f"{'score':>8}  colour"]
    for part in explanation.parts:
        peak = f"({part.peak[0]:.1f}, {part.peak[1]:.1f})"
        lines.append(f"  {part.filter:>6}  {part.category:<16} {part.contribution:>12.4g}  "
                     f"{peak:>16}  {part.score:>8.4g}  {part.colour}")
    return "\n".join(lines)


def _mark(image, y, x, colour, radius):
    """A filled square in `colour` with a black edge at pixel (y, x), in place."""
    height, width = image.shape[:2]
    row, col = int(round(y)), int(round(x))
    for r, fill in ((radius + 1, _MARK_COLOUR_EDGE), (radius, colour)):
        image[max(row - r, 0):min(row + r + 1, height),
              max(col - r, 0):min(col + r + 1, width)] = fill
    return image


def overlay(raw, outputs, explanation: Explanation, index=0):
    """raw uint8 [H, W, 3] (the image that was sent) with the explanation's part maps in their
    colours (visualize.overlay_part_maps) and a marker on each part's peak."""
    raw = np.asarray(raw, np.uint8)
    filters = [part.filter for part in explanation.parts]
    shown = shown_order(outputs, filters, index)
    image = overlay_part_maps(raw, np.asarray(outputs["part_maps"])[index][..., shown],
                              top_k=len(shown))
    radius = max(1, min(raw.shape[:2]) // 64)
    for i, f in enumerate(shown):
        y, x = outputs["part_peaks"][index, f]
        _mark(image, y, x, PALETTE[i % len(PALETTE)].astype(np.uint8), radius)
    return image
