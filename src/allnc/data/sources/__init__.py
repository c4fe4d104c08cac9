"""Data sources in their real on-disk formats, each giving a train and a test :class:`Split`.

One module per format, each registering its loader(s) in ``SOURCES`` under the
``data.name`` values it serves:

* :mod:`.cifar` -- ``cifar10``, ``cifar100``: torchvision's pickle batches or an
  image-folder tree ``train/<class>/*``, ``test/<class>/*`` (for example a JPEG copy).
* :mod:`.fmnist` -- ``fmnist``: the Fashion-MNIST IDX files (gzipped or not), flat as
  Debian's ``dataset-fashion-mnist`` installs them or in torchvision's ``FashionMNIST/raw/``.
* :mod:`.imagefolder` -- ``imagefolder``: any tree ``train/<class>/*``, ``test/<class>/*``.
* :mod:`.listfile` -- ``listfile``: "relative/path label" list files (ImageNet-LT,
  iNaturalist, Places-LT style).

:mod:`.base` holds what they share (:class:`Split`, :class:`Source`, the small-image
probe/decode/``.npz`` cache). ``SOURCES.get(d.name)(d)`` loads the ``data`` section ``d``.
"""
from .base import (
    DATA_HOME,
    IMAGE_EXTENSIONS,
    PROBE_IMAGES,
    SMALL_MAX_SIDE,
    SOURCES,
    Source,
    Split,
    decode_images,
    materialize,
    probe,
)
from .cifar import load_cifar, read_cifar_pickles
from .fmnist import FMNIST_CLASSES, FMNIST_DEBIAN, load_fmnist, read_fmnist_idx, read_idx
from .imagefolder import load_imagefolder, scan_folder
from .listfile import load_list_split, load_listfile, read_list_file

__all__ = [
    "DATA_HOME",
    "FMNIST_CLASSES",
    "FMNIST_DEBIAN",
    "IMAGE_EXTENSIONS",
    "PROBE_IMAGES",
    "SMALL_MAX_SIDE",
    "SOURCES",
    "Source",
    "Split",
    "decode_images",
    "load_cifar",
    "load_fmnist",
    "load_imagefolder",
    "load_list_split",
    "load_listfile",
    "materialize",
    "probe",
    "read_cifar_pickles",
    "read_fmnist_idx",
    "read_idx",
    "read_list_file",
    "scan_folder",
]
