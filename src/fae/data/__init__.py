"""Datasets (Fashion-MNIST, ImageNet-layout folders, unlabelled folders) and their transforms."""
from fae.data.datasets import DataConfig, build_dataset

__all__ = ["DataConfig", "build_dataset"]
