"""Datasets, their given and carved splits, tf.data pipelines and the preprocessing model.

A dataset source yields rows with a `part` each: the split the source itself assigns
("train", "val" or "test"; Fashion-MNIST's official test set, a folder's `test/`). `split`
keeps every given split as it is and carves only the missing ones out of the training rows,
seeded and stratified; the data card and `Splits.origin` say which were given, which carved.

| module | holds |
|---|---|
| `dataset` | `Dataset`, `Splits`, `Images` (image files decoded on demand) |
| `builtin` | digits and Fashion-MNIST |
| `readers` | image folders and `.npz` array files |
| `sources` | `load_dataset`, `dataset_info`, `check_dataset`, `subset_train`, `source_hash` |
| `splitting` | `split`, `bag_rows`, `split_table` |
| `store` | `data/raw.npz`, `data/splits.npz` and the data card |
| `tfdata` | `batches`, `make_dataset`, the preprocessing model |
| `augment` | the augmentation spec and its Keras layers |

The names below are the package's API (`from kernelib import data; data.split(...)`).
"""

from kernelib.data.augment import (
    AUGMENT_FILE,
    augment_draws,
    augment_spec,
    augmenter,
    read_augment,
    save_augment,
)
from kernelib.data.builtin import (
    DATASETS,
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_DIR,
    load_fashion_mnist,
    read_idx,
)
from kernelib.data.dataset import PARTS, Dataset, Images, Splits, decode_image, take
from kernelib.data.readers import IMAGE_SUFFIXES, MIN_PER_CLASS, read_arrays, read_folder
from kernelib.data.sources import (
    check_dataset,
    dataset_info,
    load_dataset,
    source_hash,
    subset_train,
)
from kernelib.data.splitting import bag_rows, split, split_table
from kernelib.data.store import data_card, read_dataset, read_splits, save_dataset, save_splits
from kernelib.data.tfdata import batches, build_preprocessor, make_dataset, preprocessing_summary

__all__ = [
    "AUGMENT_FILE", "DATASETS", "FASHION_MNIST_CLASSES", "FASHION_MNIST_DIR", "IMAGE_SUFFIXES",
    "MIN_PER_CLASS", "PARTS", "Dataset", "Images", "Splits", "augment_draws", "augment_spec",
    "augmenter", "bag_rows", "batches", "build_preprocessor", "check_dataset", "data_card",
    "dataset_info", "decode_image", "load_dataset", "load_fashion_mnist", "make_dataset",
    "preprocessing_summary", "read_arrays", "read_augment", "read_dataset", "read_folder",
    "read_idx", "read_splits", "save_augment", "save_dataset", "save_splits", "source_hash",
    "split", "split_table", "subset_train", "take",
]
