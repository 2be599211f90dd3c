"""Data sets: real readers of each format, held on the training device where they fit."""

from implicit_sparsity.data.device_data import Augmentation, DeviceTensorData
from implicit_sparsity.data.registry import DATASETS, get_dataset_entry, load_dataset, locate
from implicit_sparsity.data.streaming import StreamingImageData

__all__ = ["Augmentation", "DeviceTensorData", "StreamingImageData", "DATASETS",
           "get_dataset_entry", "load_dataset", "locate"]
