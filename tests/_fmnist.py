"""The skip marker of tests that read the offline Fashion-MNIST files (Debian package
``dataset-fashion-mnist``)."""
import pytest

from jdiff import data


def have_fmnist() -> bool:
  try:
    data.get_dataset("fashion_mnist", split="test")
    return True
  except (ValueError, FileNotFoundError):
    return False


needs_fmnist = pytest.mark.skipif(not have_fmnist(), reason="needs Fashion-MNIST (apt-get install "
                                  "dataset-fashion-mnist)")
