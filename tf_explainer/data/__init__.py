"""Data: the landmark manifest, its converters, the synthetic parts dataset and the tf.data pipeline."""

from tf_explainer.data.manifest import (ManifestError, ManifestRecord, ReadReport, read_manifest,
                                        write_manifest)
from tf_explainer.data.pipeline import (DataSource, batches, manifest_source, map_landmarks,
                                        synthetic_source)
