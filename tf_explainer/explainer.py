"""The explainer network and its training step (docs/method.md).

The explainer reads the performer's target-layer map x0 and reconstructs the performer's upper
layers through an interpretable track (part filters) and an ordinary track, fused with weight p.
Batches are dicts of performer features {"target", "recon_0", ..., "scores", "label"} (from a
feature cache), or {"image", "label"} when a performer is attached with `attach_performer`.
"""

import keras
import tensorflow as tf

from tf_explainer.distribute import global_batch_size, global_sum, num_replicas
from tf_explainer.filter_loss import filter_loss_scale, get_filter_loss
from tf_explainer.layers import ChannelNorm, PartMask, TrackFusion

POOL_POSITIONS = ("A", "B")
CATEGORY_SOURCES = ("prediction", "label")
OBJECTIVES = ("reconstruction", "classification")
_LOG_TERMS = ("loss", "log_p", "filter_interp_1", "filter_interp_2", "p", "performer_accuracy",
              "reconstructed_accuracy")
# Variable groups whose gradient norms `gradient_norms` reports, and the loss terms it splits.
BALANCE_GROUPS = ("conv_interp_1", "conv_interp_2", "fusion")
BALANCE_TERMS = ("objective", "filter", "log_p")


class _Untracked:
    """Holds an object without Keras tracking it (the performer is not part of the explainer)."""

    def __init__(self, value):
        self.value = value


@keras.saving.register_keras_serializable(package="tf_explainer")
class Explainer(keras.Model):
    """Interpretable track + ordinary track + fusion + decoder over a frozen performer's head.

    Args:
      target_shape: (n, n, M) of the performer's target layer.
      reconstruct_dims: widths of the reconstructed layers (e.g. fc6, fc7).
      head: frozen keras.Model mapping the last reconstruction to class scores.
      interp_filters: channels of conv-interp-1 (the performer's top conv).
      part_filters: channels of conv-interp-2 and conv-ordin (the performer's pool5).
      kernel_size: kernel of conv-interp-1 (copied from the top conv).
      pool: serialised Keras pooling layer copied from the performer, or None.
      pool_position: "A" mask then pool (default), "B" pool then mask on the pooled grid.
      template_form, centre: PartMask options ("paper"/"official", "argmax"/"centroid").
      filter_loss: registered name or callable (see filter_loss.py).
      filter_loss_weight: lambda, a multiplier on the authors' scale kappa_t = 1e-6 / epoch.
      eta: weight of -log p.
      use_masks: apply the part masks (False: the "no masks" ablation; the filter loss stays).
      sharpness_rate: per-step pull of the official form's a_d toward its target.
      category_source: "prediction" (the performer's, default) or "label".
      negative_class: class index that no filter is assigned to (e.g. "background"), or None.
      decoder_activations: per decoder layer, "relu" or None.
      norm_positives_only: estimate the interpretable track's norm on positive images only.
      learn_sigma: train the norms' sigma with the reconstruction gradient besides the running
        statistic (False: the moving average alone).
      fusion_logit_scale: learning-rate multiplier for p under Adam (see TrackFusion).
      objective: "reconstruction" (the method) or "classification": the "Explainer+cls" baseline,
        trained with cross-entropy of the head on the explainer's output against each image's
        ground-truth label instead of reconstructing the performer's layers.
      scores_are_logits: whether the head emits logits (for the classification objective).
      layer_dtype: dtype policy of the convs and the decoder, e.g. "mixed_bfloat16"; default: the
        global policy when the explainer is built. The model itself (masks and templates, norms,
        fusion weight p, losses, every output) computes in float32. mixed_float16 needs loss
        scaling: compile with a keras.optimizers.LossScaleOptimizer (training.train_explainer does).
    """

    def __init__(self, target_shape, reconstruct_dims, head, interp_filters, part_filters,
                 kernel_size=3, pool=None, pool_position="A", template_form="paper",
                 centre="argmax", filter_loss="approximate", filter_loss_weight=1.0, eta=1.0,
                 category_source="prediction", negative_class=None, decoder_activations=None,
                 norm_momentum=0.9, norm_positives_only=True, assignment_momentum=0.9,
                 fusion_logit_scale=1.0, objective="reconstruction", scores_are_logits=True,
                 layer_dtype=None, use_masks=True, sharpness_rate=1e-3, learn_sigma=True,
                 **kwargs):
        # float32 model: Keras reads variables in the model's compute dtype inside its call, and
        # p (read there, and served) must not be rounded to 16 bits.
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        if pool_position not in POOL_POSITIONS:
            raise ValueError(f"pool_position must be one of {POOL_POSITIONS}, got {pool_position!r}.")
        if category_source not in CATEGORY_SOURCES:
            raise ValueError(f"category_source must be one of {CATEGORY_SOURCES}.")
        if objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}.")
        if isinstance(head, dict):
            head = keras.saving.deserialize_keras_object(head)
        self.target_shape = tuple(int(d) for d in target_shape)
        self.reconstruct_dims = [int(d) for d in reconstruct_dims]
        self.head = head
        self.head.trainable = False
        self.num_classes = int(head.outputs[0].shape[-1])
        self.interp_filters = int(interp_filters)
        self.part_filters = int(part_filters)
        self.kernel_size = int(kernel_size)
        self.pool = pool
        self.pool_position = pool_position
        self.template_form = template_form
        self.centre = centre
        self.filter_loss = filter_loss
        self._filter_loss_fn = get_filter_loss(filter_loss)
        self.filter_loss_weight = float(filter_loss_weight)
        self.eta = float(eta)
        self.category_source = category_source
        self.negative_class = None if negative_class is None else int(negative_class)
        self.decoder_activations = list(decoder_activations or ["relu"] * len(reconstruct_dims))
        self.norm_momentum = float(norm_momentum)
        self.norm_positives_only = bool(norm_positives_only)
        self.assignment_momentum = float(assignment_momentum)
        self.fusion_logit_scale = float(fusion_logit_scale)
        self.objective = objective
        self.scores_are_logits = bool(scores_are_logits)
        self.layer_dtype = keras.dtype_policies.get(layer_dtype or keras.mixed_precision.global_policy())
        self.use_masks = bool(use_masks)
        self.sharpness_rate = float(sharpness_rate)
        self.learn_sigma = bool(learn_sigma)
        self._performer = _Untracked(None)

        # Masks (templates, peaks), norms and the fusion stay float32: they hold the moving
        # statistics and feed the filter loss.
        conv = dict(padding="same", activation="relu", dtype=self.layer_dtype)
        exact = dict(dtype="float32")
        self.conv_interp_1 = keras.layers.Conv2D(interp_filters, kernel_size, name="conv_interp_1", **conv)
        self.mask_1 = PartMask(template_form, centre, sharpness_rate=sharpness_rate, name="mask_1",
                               **exact)
        self.conv_interp_2 = keras.layers.Conv2D(part_filters, 3, name="conv_interp_2", **conv)
        self.mask_2 = PartMask(template_form, centre, sharpness_rate=sharpness_rate, name="mask_2",
                               **exact)
        self.conv_ordin = keras.layers.Conv2D(part_filters, 3, name="conv_ordin", **conv)
        self.pool_interp = self._pool_copy("pool_interp")
        self.pool_ordin = self._pool_copy("pool_ordin")
        self.norm_interp = ChannelNorm(norm_momentum, positives_only=norm_positives_only,
                                       learn_sigma=learn_sigma, name="norm_interp", **exact)
        self.norm_ordin = ChannelNorm(norm_momentum, positives_only=norm_positives_only,
                                      learn_sigma=learn_sigma, name="norm_ordin", **exact)
        self.fusion = TrackFusion(fusion_logit_scale, name="fusion", **exact)
        self.flatten = keras.layers.Flatten(name="flatten", dtype=self.layer_dtype)
        self.decoder = [keras.layers.Dense(d, activation=a, name=f"fc_dec_{i + 1}",
                                           dtype=self.layer_dtype)
                        for i, (d, a) in enumerate(zip(self.reconstruct_dims, self.decoder_activations))]
        self.reconstruction_weights = self.add_weight(
            name="reconstruction_weights", shape=(len(self.reconstruct_dims),),
            initializer="ones", trainable=False)
        self.assignment_1 = self.add_weight(name="assignment_1", shape=(interp_filters, self.num_classes),
                                            initializer="zeros", trainable=False, aggregation="mean")
        self.assignment_2 = self.add_weight(name="assignment_2", shape=(part_filters, self.num_classes),
                                            initializer="zeros", trainable=False, aggregation="mean")
        # Batches per epoch, so the step can tell the epoch t of kappa_t = kappa_0 / t from the
        # optimizer's iteration count (0: unknown, t = 1). training.train_explainer sets it
        # before training (it is read when the step is traced); not a weight: it describes the
        # data, not the model.
        self.steps_per_epoch = 0
        self._trackers = {name: keras.metrics.Mean(name=name) for name in (objective,) + _LOG_TERMS}
        self(tf.zeros((1,) + self.target_shape))

    def _pool_copy(self, name):
        if self.pool is None:
            return None
        config = dict(self.pool["config"])
        config["name"] = name
        return keras.layers.deserialize({**self.pool, "config": config})

    # ---- forward -------------------------------------------------------------------------
    def call(self, x0, positive=None, training=None):
        """Returns a dict: part maps, both tracks, p, the reconstructions and the class scores.

        positive: optional (per-filter [B, C1], per-filter [B, C2], per-image [B]) float masks
        used by the training-time statistics (norms, official-form sharpness).
        """
        outputs = self.part_stage(x0, positive, training)
        outputs.update(self.from_part_maps(outputs["part_maps"], outputs["ordin"], positive, training))
        return outputs

    def part_stage(self, x0, positive=None, training=None):
        """conv-interp-1 -> mask -> conv-interp-2 (the part maps) and conv-ordin, on x0.

        The maps are float32 whatever the dtype policy (mixed precision stays inside the convs),
        so masks, losses, evaluation and the served outputs read float32."""
        pos_1 = None if positive is None else positive[0]
        interp_1 = tf.cast(self.conv_interp_1(x0), tf.float32)
        part_maps = tf.cast(self.conv_interp_2(self._mask(self.mask_1, interp_1, pos_1, training)),
                            tf.float32)
        return {"interp_1": interp_1, "part_maps": part_maps,
                "ordin": tf.cast(self.conv_ordin(x0), tf.float32)}

    def from_part_maps(self, part_maps, ordin, positive=None, training=None):
        """Everything after the part maps: mask and pool (in `pool_position` order), norms,
        fusion, decoder and head. Gradients of the scores reach `part_maps` (Grad-CAM uses it).

        Also returns what conv-interp-2's filter loss is put on: `fused_interp`, the fused
        channel p * x_interp + (1 - p) * stop_gradient(x_ordin) of the tensors that enter the
        fusion (its gradient reaches conv-interp-2 through norm, pool and mask, and p; not the
        norm's sigma), and `centres_2`, its template centres (pool position B: where the forward
        mask was centred; A: the fused channel's own centre)."""
        _, pos_2, pos_image = positive if positive is not None else (None, None, None)
        if self.pool_position == "A":
            x_interp = self._pool(self.pool_interp, self._mask(self.mask_2, part_maps, pos_2, training))
            x_ordin = self._pool(self.pool_ordin, ordin)
            centres_2 = None
        else:
            pooled = self._pool(self.pool_interp, part_maps)
            centres_2 = self.mask_2.centres(pooled)
            x_interp = self._mask(self.mask_2, pooled, pos_2, training)
            x_ordin = self._pool(self.pool_ordin, ordin)
        ordin_positive = None if pos_image is None else tf.tile(pos_image[:, None], [1, self.part_filters])
        if not self.norm_interp.built:
            self.norm_interp.build(x_interp.shape)
        # Read before the norm's training update, so it equals what the forward divides by.
        sigma_interp = tf.stop_gradient(tf.convert_to_tensor(self.norm_interp.sigma))
        outputs = {"pre_norm_interp": x_interp, "pre_norm_ordin": x_ordin,
                   "x_interp": self.norm_interp(x_interp, positive=pos_2, training=training),
                   "x_ordin": self.norm_ordin(x_ordin, positive=ordin_positive, training=training)}
        outputs.update(self.decode(outputs["x_interp"], outputs["x_ordin"]))
        p = outputs["p"]
        fused = (p * self.norm_interp.normalise(x_interp, sigma_interp)
                 + (1 - p) * tf.stop_gradient(outputs["x_ordin"]))
        outputs["fused_interp"] = fused
        outputs["centres_2"] = self.mask_2.centres(fused) if centres_2 is None else centres_2
        return outputs

    def _mask(self, mask, x, positive, training):
        if self.use_masks:
            return mask(x, positive=positive, training=training)
        if not mask.built:  # unused in the forward pass, but its templates feed the filter loss
            mask.build(x.shape)
        return x

    def decode(self, x_interp, x_ordin):
        """Fusion, decoder and the performer's head on the two normalised tracks."""
        h = self.flatten(self.fusion([x_interp, x_ordin]))
        reconstructions = []
        for dense in self.decoder:
            h = tf.cast(dense(h), tf.float32)
            reconstructions.append(h)
        return {"reconstructions": reconstructions, "scores": tf.cast(self.head(h), tf.float32),
                "p": self.fusion.p()}

    @staticmethod
    def _pool(layer, x):
        return x if layer is None else layer(x)

    # ---- categories and filter assignment --------------------------------------------------
    def image_categories(self, batch):
        """Each image's category: the performer's prediction (default) or the label."""
        if self.category_source == "label":
            return tf.cast(tf.reshape(batch["label"], [-1]), tf.int32)
        return tf.argmax(batch["scores"], axis=-1, output_type=tf.int32)

    def _assignable(self, scores):
        """Mask out the negative class so no filter is assigned to it."""
        if self.negative_class is None:
            return scores
        keep = tf.one_hot(self.negative_class, self.num_classes, on_value=0.0, off_value=1.0)
        return tf.where(keep > 0, scores, -1e30)

    def filter_categories(self):
        """(category of each conv-interp-1 filter, of each conv-interp-2 filter), int32."""
        return tuple(tf.argmax(self._assignable(s), axis=-1, output_type=tf.int32)
                     for s in (self.assignment_1, self.assignment_2))

    def positives(self, categories):
        """Per-filter positive masks for both layers and the per-image positive mask."""
        cat_1, cat_2 = self.filter_categories()
        pos_1 = tf.cast(categories[:, None] == cat_1[None, :], tf.float32)
        pos_2 = tf.cast(categories[:, None] == cat_2[None, :], tf.float32)
        if self.negative_class is None:
            pos_image = tf.ones_like(categories, tf.float32)
        else:
            pos_image = tf.cast(categories != self.negative_class, tf.float32)
        return pos_1, pos_2, pos_image

    @staticmethod
    def class_sums(values, categories, num_classes):
        """Per-class sums of per-image values [B, C] -> ([C, K] sums, [K] counts), this replica."""
        onehot = tf.one_hot(categories, num_classes)  # [B, K]
        return tf.matmul(values, onehot, transpose_a=True), tf.reduce_sum(onehot, 0)

    def _update_assignment(self, variable, maps, categories):
        """S[d, c] <- m S[d, c] + (1 - m) mean over images of class c of max_ij x_d."""
        peaks = tf.reduce_max(tf.cast(maps, tf.float32), axis=[1, 2])
        sums, counts = global_sum(*self.class_sums(peaks, categories, self.num_classes))
        means = sums / tf.maximum(counts, 1.0)
        m = self.assignment_momentum
        variable.assign(tf.where(counts[None, :] > 0, m * variable + (1 - m) * means, variable))

    # ---- losses --------------------------------------------------------------------------
    def _per_image_objective(self, batch, outputs):
        """Sum_l lambda_l ||y_l - y*_l||^2, or the baseline's cross-entropy on labels, per image."""
        if self.objective == "classification":
            return keras.losses.sparse_categorical_crossentropy(
                tf.cast(tf.reshape(batch["label"], [-1]), tf.int32),
                tf.cast(outputs["scores"], tf.float32), from_logits=self.scores_are_logits)
        per_image = 0.0
        for i, y in enumerate(outputs["reconstructions"]):
            target = tf.cast(batch[f"recon_{i}"], tf.float32)
            error = tf.reduce_sum(tf.square(tf.cast(y, tf.float32) - target), axis=-1)
            per_image += self.reconstruction_weights[i] * error
        return per_image

    def epoch(self):
        """The 1-based training epoch t, from the optimizer's iterations (1 before training)."""
        if getattr(self, "optimizer", None) is None or self.steps_per_epoch <= 0:
            return tf.constant(1, tf.int64)
        done = tf.cast(tf.convert_to_tensor(self.optimizer.iterations), tf.int64)
        return done // self.steps_per_epoch + 1

    def filter_terms(self, outputs, positive):
        """The two filter losses (unscaled readouts whose gradients are the injected ones)."""
        pos_1, pos_2, _ = positive
        return (self._filter_loss_fn(outputs["interp_1"], pos_1, self.mask_1),
                self._filter_loss_fn(outputs["fused_interp"], pos_2, self.mask_2,
                                     outputs["centres_2"]))

    def compute_losses(self, batch, outputs, positive):
        """Each loss term (docs/method.md) as this replica's share of the global-batch loss."""
        batch_size = global_batch_size(tf.shape(batch["target"])[0])
        objective = tf.reduce_sum(self._per_image_objective(batch, outputs)) / batch_size
        log_p = -self.eta * self.fusion.log_p() / num_replicas()
        filter_1, filter_2 = self.filter_terms(outputs, positive)
        scale = filter_loss_scale(self.filter_loss_weight, self.epoch())
        total = objective + log_p + scale * (filter_1 + filter_2)
        return {"loss": total, self.objective: objective, "log_p": log_p,
                "filter_interp_1": filter_1, "filter_interp_2": filter_2}

    def gradient_norms(self, data, filter_loss_weight=None):
        """||gradient|| of each loss term on conv-interp-1, conv-interp-2 and the fusion logits.

        One forward pass in training mode's loss setting (no statistics are updated); the filter
        term is scaled by lambda (filter_loss_weight, default the model's) * kappa_t.
        Returns {f"{term}/{group}": float32 scalar} for BALANCE_TERMS x BALANCE_GROUPS.
        """
        weight = self.filter_loss_weight if filter_loss_weight is None else filter_loss_weight
        batch = self.features(data)
        positive = self.positives(self.image_categories(batch))
        # The backend tf.Variables: the tape's unconnected_gradients option needs them.
        groups = {name: [v.value for v in layer.trainable_variables]
                  for name, layer in (("conv_interp_1", self.conv_interp_1),
                                      ("conv_interp_2", self.conv_interp_2),
                                      ("fusion", self.fusion))}
        variables = [v for group in BALANCE_GROUPS for v in groups[group]]
        with tf.GradientTape(persistent=True) as tape:
            outputs = self(batch["target"], training=False)
            losses = self.compute_losses(batch, outputs, positive)
            terms = {"objective": losses[self.objective], "log_p": losses["log_p"],
                     "filter": filter_loss_scale(weight, self.epoch())
                     * (losses["filter_interp_1"] + losses["filter_interp_2"])}
        norms = {}
        for term, value in terms.items():
            gradients = dict(zip([id(v) for v in variables],
                                 tape.gradient(value, variables, unconnected_gradients=tf.UnconnectedGradients.ZERO)))
            for group in BALANCE_GROUPS:
                norms[f"{term}/{group}"] = tf.linalg.global_norm(
                    [gradients[id(v)] for v in groups[group]])
        del tape
        return norms

    # ---- steps ---------------------------------------------------------------------------
    @property
    def needs_loss_scaling(self):
        """float16 layers need a keras.optimizers.LossScaleOptimizer (Keras' compile adds one only
        when the model's own policy is mixed_float16; this model's is float32)."""
        return self.layer_dtype.name == "mixed_float16"

    def attach_performer(self, taps):
        """Lets batches carry images: `taps` (Performer.taps()) computes the features in-step."""
        self._performer = _Untracked(taps)

    @property
    def performer_taps(self):
        """The attached performer's taps model (Performer.taps()), or None."""
        return self._performer.value

    def performer_features(self, images):
        """The attached performer's taps on preprocessed images."""
        if self._performer.value is None:
            raise ValueError("No performer is attached; call attach_performer(performer.taps()) "
                             "or feed cached features.")
        return dict(self._performer.value(images, training=False))

    def features(self, batch):
        """Performer features of a batch: as given (cache) or computed from its images."""
        if "target" in batch:
            return batch
        features = self.performer_features(batch["image"])
        features["label"] = batch["label"]
        return features

    def _record(self, losses, outputs, batch):
        replicas = float(num_replicas())
        for name, value in losses.items():
            self._trackers[name].update_state(value * replicas)
        self._trackers["p"].update_state(outputs["p"])
        label = tf.cast(tf.reshape(batch["label"], [-1]), tf.int32)
        for name, scores in (("performer_accuracy", batch["scores"]),
                             ("reconstructed_accuracy", outputs["scores"])):
            correct = tf.cast(tf.argmax(scores, -1, output_type=tf.int32) == label, tf.float32)
            self._trackers[name].update_state(correct)
        return {name: tracker.result() for name, tracker in self._trackers.items()}

    def train_step(self, data):
        if self.needs_loss_scaling and not isinstance(self.optimizer, keras.optimizers.LossScaleOptimizer):
            raise ValueError("An explainer with mixed_float16 layers needs loss scaling: compile it with "
                             "keras.optimizers.LossScaleOptimizer(optimizer) (training.train_explainer "
                             "does).")
        batch = self.features(data)
        categories = self.image_categories(batch)
        positive = self.positives(categories)
        with tf.GradientTape() as tape:
            outputs = self(batch["target"], positive=positive, training=True)
            losses = self.compute_losses(batch, outputs, positive)
            # Loss scaling under mixed_float16 (a LossScaleOptimizer); identity otherwise.
            scaled_loss = self.optimizer.scale_loss(losses["loss"])
        variables = self.trainable_variables
        gradients = tape.gradient(scaled_loss, variables)
        self.optimizer.apply_gradients(zip(gradients, variables))
        self._update_assignment(self.assignment_1, outputs["interp_1"], categories)
        self._update_assignment(self.assignment_2, outputs["part_maps"], categories)
        return self._record(losses, outputs, batch)

    def test_step(self, data):
        batch = self.features(data)
        positive = self.positives(self.image_categories(batch))
        outputs = self(batch["target"], training=False)
        return self._record(self.compute_losses(batch, outputs, positive), outputs, batch)

    @property
    def metrics(self):
        return list(self._trackers.values())

    # ---- serialisation -------------------------------------------------------------------
    def get_config(self):
        if not isinstance(self.filter_loss, str):
            raise ValueError("Only a registered filter loss (by name) can be serialised.")
        return {**super().get_config(),
                "target_shape": self.target_shape, "reconstruct_dims": self.reconstruct_dims,
                "head": keras.saving.serialize_keras_object(self.head),
                "interp_filters": self.interp_filters, "part_filters": self.part_filters,
                "kernel_size": self.kernel_size, "pool": self.pool,
                "pool_position": self.pool_position, "template_form": self.template_form,
                "centre": self.centre, "filter_loss": self.filter_loss,
                "filter_loss_weight": self.filter_loss_weight, "eta": self.eta,
                "category_source": self.category_source, "negative_class": self.negative_class,
                "decoder_activations": self.decoder_activations,
                "norm_momentum": self.norm_momentum, "norm_positives_only": self.norm_positives_only,
                "assignment_momentum": self.assignment_momentum,
                "fusion_logit_scale": self.fusion_logit_scale, "objective": self.objective,
                "scores_are_logits": self.scores_are_logits, "layer_dtype": self.layer_dtype.name,
                "use_masks": self.use_masks, "sharpness_rate": self.sharpness_rate,
                "learn_sigma": self.learn_sigma}
