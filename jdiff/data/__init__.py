"""jdiff.data: random-access datasets and a deterministic, resumable, multi-process input pipeline
on grain.

Imports numpy and grain (and jax for device/process counts); scikit-learn and tensorflow_datasets are
imported only when a dataset that needs them is requested.
"""
from jdiff.data.pipeline import Pipeline, flip_mask, make_pipeline
from jdiff.data.sources import (FASHION_MNIST_DIR, KINDS, OFFLINE_DATASETS, ArraySource, Source,
                                TfdsSource, center_crop_resize, dataset_names, get_dataset, kind_of,
                                load_idx_images, parse_idx, read_idx, tfds_source)

__all__ = ["Pipeline", "flip_mask", "make_pipeline", "FASHION_MNIST_DIR", "OFFLINE_DATASETS",
           "KINDS", "kind_of", "ArraySource", "Source", "TfdsSource", "center_crop_resize", "dataset_names", "get_dataset",
           "load_idx_images", "parse_idx", "read_idx", "tfds_source"]
