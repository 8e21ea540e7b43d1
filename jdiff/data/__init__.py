"""jdiff.data: random-access datasets and a deterministic, resumable, multi-process input pipeline
on grain.

Imports numpy and grain (and jax for device/process counts); scikit-learn and tensorflow_datasets are
imported only when a dataset that needs them is requested. Text corpora, the character tokenizer and
the document split are in :mod:`jdiff.data.text`; captioned images for text-to-image models (the
caption grammar, the word tokenizer, held-out class pairs) in :mod:`jdiff.data.captions`.
"""
from jdiff.data import captions, text
from jdiff.data.captions import WordTokenizer, parse_caption
from jdiff.data.pipeline import Pipeline, flip_mask, make_pipeline
from jdiff.data.sources import (FASHION_MNIST_DIR, KINDS, OFFLINE_DATASETS, TEXT_PREFIX,
                                TFDS_CAPTION_DATASETS, ArraySource, CaptionSource, Source, TextSource,
                                TfdsSource, TfdsTextSource, caption_dataset, center_crop_resize,
                                dataset_names, get_dataset, kind_of, load_idx_images, parse_idx,
                                read_idx, text_source, tfds_source)
from jdiff.data.text import FORTUNES_DIR, CharTokenizer, read_fortunes, read_text_file

__all__ = ["Pipeline", "flip_mask", "make_pipeline", "FASHION_MNIST_DIR", "FORTUNES_DIR",
           "OFFLINE_DATASETS", "KINDS", "TEXT_PREFIX", "TFDS_CAPTION_DATASETS", "kind_of", "ArraySource",
           "CaptionSource", "CharTokenizer", "Source", "TextSource", "TfdsSource", "TfdsTextSource",
           "WordTokenizer", "caption_dataset", "captions", "center_crop_resize", "dataset_names",
           "get_dataset", "load_idx_images", "parse_caption", "parse_idx", "read_fortunes", "read_idx",
           "read_text_file", "text", "text_source", "tfds_source"]
