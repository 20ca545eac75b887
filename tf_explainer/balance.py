"""Balance of the explainer's loss terms (docs/method.md, "Balance").

All three terms (reconstruction, -eta log p, the filter losses) must move the explainer. The
measure is the ratio of gradient norms, ||grad of a term|| / ||grad of the reconstruction||, on
conv-interp-1, conv-interp-2 and the fusion logits (Explainer.gradient_norms). The authors' filter
loss scale kappa_0 = 1e-6 belongs to their summed logistic loss; ours is a normalised squared
error, so lambda is set from this measurement: `calibrated_filter_loss_weight` picks the lambda
that gives a chosen ratio on conv-interp-2 at the start of training, and `GradientBalance` logs
the ratios every epoch.
"""

import keras
import numpy as np
from absl import logging

from tf_explainer.explainer import BALANCE_GROUPS

# Where the ratios appear in the epoch logs (and so in TensorBoard and the history).
RATIO_KEYS = {f"grad_ratio_{term}_{group}": (term, group)
              for term in ("filter", "log_p") for group in BALANCE_GROUPS
              if not (term == "log_p" and group != "fusion")}


def gradient_ratios(norms):
    """{RATIO_KEYS name: ||grad term|| / ||grad objective||} from Explainer.gradient_norms."""
    ratios = {}
    for key, (term, group) in RATIO_KEYS.items():
        objective = float(norms[f"objective/{group}"])
        ratios[key] = float(norms[f"{term}/{group}"]) / objective if objective > 0 else float("inf")
    return ratios


def mean_gradient_ratios(explainer, batches, filter_loss_weight=None):
    """gradient_ratios of the summed norms over `batches` (a few batches steady the estimate)."""
    totals = None
    for batch in batches:
        norms = {k: float(v) for k, v in explainer.gradient_norms(batch, filter_loss_weight).items()}
        totals = norms if totals is None else {k: totals[k] + norms[k] for k in totals}
    if totals is None:
        raise ValueError("No batch to measure the gradient balance on.")
    return gradient_ratios(totals)


# The default filter / reconstruction ratio on conv-interp-2 at the start of training: the
# largest that keeps the part filters distinct (docs/method.md, "Why a strong filter loss turns
# the part filters into copies"; the sweep is in configs/README.md).
DEFAULT_BALANCE = 0.3


def calibrated_filter_loss_weight(explainer, batches, target_ratio):
    """lambda such that ||grad filter|| / ||grad reconstruction|| on conv-interp-2 equals
    `target_ratio` at the explainer's current weights (the ratio is linear in lambda)."""
    ratio = mean_gradient_ratios(explainer, batches, 1.0)["grad_ratio_filter_conv_interp_2"]
    if not np.isfinite(ratio) or ratio <= 0:
        raise ValueError(f"Cannot calibrate lambda: the filter/reconstruction gradient ratio at "
                         f"lambda 1 is {ratio}.")
    weight = target_ratio / ratio
    logging.info("Filter-loss balance: ratio %.3g at lambda 1 -> lambda %.4g for ratio %.3g.",
                 ratio, weight, target_ratio)
    return weight


class GradientBalance(keras.callbacks.Callback):
    """Adds the gradient-norm ratios, measured on fixed batches, to each epoch's logs.

    Put it before keras.callbacks.TensorBoard so the ratios are written with the epoch's scalars.
    `history` keeps them per epoch.
    """

    def __init__(self, batches):
        super().__init__()
        self.batches = list(batches)
        self.history = []

    def on_epoch_end(self, epoch, logs=None):
        ratios = mean_gradient_ratios(self.model, self.batches)
        self.history.append(ratios)
        if logs is not None:
            logs.update(ratios)
