"""Part templates on an h x w grid (docs/method.md, "Templates and masks").

Two forms:
- "paper": t_ij = tau * max(1 - beta * ||[i,j] - mu||_1 / n, -1), tau = 0.5 / n^2, beta = 4.
  The L1 distance is taken per axis in cells divided by that axis' size, which is the paper's
  ||.||_1 / n on square maps.
- "official": coordinates normalised to [-1, 1] per axis, t = max(1 - a_d * L1, -1), no tau,
  with a per-channel sharpness a_d.

`unit_template` returns the template without tau (peak 1, floor -1), which is what masks and the
approximate filter loss use; the exact mutual-information loss multiplies by tau itself.
"""

import numpy as np
import tensorflow as tf

FORMS = ("paper", "official")
PAPER_BETA = 4.0


def paper_tau(h: int, w: int) -> float:
    """tau = 0.5 / n^2, with n^2 the number of cells."""
    return 0.5 / (h * w)


def _axis_coordinates(size: int, form: str) -> np.ndarray:
    """Cell coordinates along one axis, in the units the form measures distance in."""
    if form == "paper":
        return np.arange(size, dtype=np.float32) / size
    if size == 1:
        return np.zeros(1, np.float32)
    return np.linspace(-1.0, 1.0, size, dtype=np.float32)


def axis_distances(centres, shape, form="paper"):
    """Per-axis distances of every row and column to each centre, in the form's units.

    centres: [..., C, 2] (row, col) cell indices; shape: (h, w). Returns float32 ([..., h, 1, C],
    [..., 1, w, C]): the L1 distance is their (broadcast) sum. The official form looks the
    centre's coordinate up in the same linspace table as the cells (as the authors' code does),
    so a centre's own cell is at distance exactly 0.
    """
    if form not in FORMS:
        raise ValueError(f"Unknown template form {form!r}; expected one of {FORMS}.")
    h, w = shape
    rows = tf.constant(_axis_coordinates(h, form))
    cols = tf.constant(_axis_coordinates(w, form))
    if form == "official":
        index = tf.cast(tf.round(tf.cast(centres, tf.float32)), tf.int32)
        mu_r, mu_c = tf.gather(rows, index[..., 0]), tf.gather(cols, index[..., 1])
    else:
        centres = tf.cast(centres, tf.float32)
        mu_r, mu_c = centres[..., 0] / h, centres[..., 1] / w
    mu_r = mu_r[..., None, None, :]  # [..., 1, 1, C]
    mu_c = mu_c[..., None, None, :]
    return tf.abs(rows[:, None, None] - mu_r), tf.abs(cols[None, :, None] - mu_c)


def l1_distance(centres, shape, form="paper"):
    """L1 distance of every cell to each centre, in the form's units.

    centres: [..., C, 2] (row, col) in cells; shape: (h, w). Returns float32 [..., h, w, C].
    """
    row_distance, col_distance = axis_distances(centres, shape, form)
    return row_distance + col_distance


def unit_template(centres, shape, form="paper", sharpness=None, floor=-1.0):
    """Unit templates max(1 - a * L1(cell, centre), floor), float32 [..., h, w, C].

    sharpness: per-channel a_d [C] for the official form (default 2); the paper form uses beta.
    floor: -1 is the template; 0 gives the mask max(T, 0) directly.
    """
    if form == "paper":
        a = PAPER_BETA
    elif sharpness is None:
        a = 2.0
    else:
        a = tf.cast(sharpness, tf.float32)
    return tf.maximum(1.0 - a * l1_distance(centres, shape, form), floor)


def template_bank(h: int, w: int, dtype=tf.float32):
    """All n^2 positive paper templates plus the negative one, as an (n^2, n^2 + 1) matrix.

    Column k < n^2 is the template centred on flattened cell k; the last column is -tau.
    Includes tau, as the mutual-information definition needs it. Priors are uniform 1/(n^2+1).
    """
    cells = np.stack(np.meshgrid(np.arange(h), np.arange(w), indexing="ij"), -1).reshape(-1, 2)
    positives = unit_template(cells[None].astype(np.float32), (h, w), "paper")  # [1, h, w, n^2]
    positives = tf.reshape(positives, [h * w, h * w])
    negative = -tf.ones([h * w, 1])
    return tf.cast(paper_tau(h, w) * tf.concat([positives, negative], axis=1), dtype)
