"""jdiff.eval: sample-quality metrics.

- :mod:`jdiff.eval.metrics`: Fréchet distance, KID, precision/recall and accuracy on features (numpy).
- :mod:`jdiff.eval.features`: a Fashion-MNIST and an MNIST-1D classifier (each trained once, cached)
  whose 128-D penultimate layers are the feature spaces for samples of those datasets.
- :mod:`jdiff.eval.evaluate`: :func:`report` scores samples and the real-data floor at the same N.
- :mod:`jdiff.eval.bpd`: bits/dim of held-out data by the probability-flow ODE and the continuous VLB.
- :mod:`jdiff.eval.model_eval`: every metric for a checkpoint and a sampler (``eval.py``).
- :mod:`jdiff.eval.inception` and :mod:`jdiff.eval.fid_stats`: the standard FID Inception-v3
  (2015-12-05 graph, pytorch-fid's port) in Flax, with user-supplied weights converted by
  ``tools/convert_fid_inception.py``; dataset reference statistics as ``.npz``.

Imports flax, optax and numpy (never torch: weights come as .npz).
"""
from jdiff.eval.features import (MNIST1DCNN, FashionCNN, FeatureNet, NetSpec, cache_dir,
                                 check_fmnist_images, check_inputs, get_feature_net, get_spec,
                                 load_feature_net, train_feature_net)
from jdiff.eval.fid_stats import (RunningStats, compute_statistics, dataset_statistics, fid,
                            load_statistics, save_statistics, statistics_from_features)
from jdiff.eval.inception import (FIDInception, FIDInceptionV3, default_weights_path,
                                  load_fid_inception, params_from_torch_state_dict, preprocess)
from jdiff.eval.metrics import (accuracy, feature_metrics, frechet_distance,
                                frechet_distance_from_features, gaussian_stats,
                                kernel_inception_distance, precision_recall)
from jdiff.eval.evaluate import format_report, report
from jdiff.eval.bpd import bits_per_dim_report, format_bpd

__all__ = ["FIDInception", "FIDInceptionV3", "FashionCNN", "FeatureNet", "MNIST1DCNN", "NetSpec",
           "RunningStats", "accuracy", "bits_per_dim_report", "format_bpd",
           "cache_dir", "check_fmnist_images", "check_inputs", "compute_statistics", "dataset_statistics",
           "default_weights_path", "feature_metrics", "fid", "format_report", "frechet_distance",
           "frechet_distance_from_features", "gaussian_stats", "get_feature_net", "get_spec",
           "kernel_inception_distance", "load_feature_net", "load_fid_inception", "load_statistics",
           "params_from_torch_state_dict", "precision_recall", "preprocess", "report",
           "save_statistics", "statistics_from_features", "train_feature_net"]
