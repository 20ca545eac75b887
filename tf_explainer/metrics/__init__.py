"""Metrics of how part-like a layer's filters are."""

from tf_explainer.metrics.instability import (
    InstabilityResult,
    assign_filters_to_categories,
    instability_of_maps,
    location_instability,
    location_instability_by_category,
    map_peaks,
    project_cells,
)

__all__ = [
    "InstabilityResult",
    "assign_filters_to_categories",
    "instability_of_maps",
    "location_instability",
    "location_instability_by_category",
    "map_peaks",
    "project_cells",
]
