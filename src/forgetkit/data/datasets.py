"""In-memory and on-disk labelled image datasets, with the model's preprocessing applied per item."""

from __future__ import annotations

import importlib
import io
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from ..errors import ForgetkitError
from ..extras import available


@dataclass(frozen=True)
class Preprocess:
    """What a model expects as input; stored in every checkpoint manifest so data and model always agree."""

    image_size: int = field(metadata={"help": "square input side in pixels; images are resized to it"})
    in_chans: int = field(metadata={"help": "1 (grey) or 3 (RGB); images are converted to it"})
    mean: tuple[float, ...] = field(default=(0.5,), metadata={"help": "per-channel mean subtracted after /255"})
    std: tuple[float, ...] = field(default=(0.5,), metadata={"help": "per-channel std divided after the mean"})

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        """uint8 or [0,1] float C×H×W tensor -> normalised float tensor of the model's shape."""
        pixels = self.pixels(img)
        return self.normalise(pixels[None])[0] if pixels is not None else self._float_path(img)

    def pixels(self, img: torch.Tensor) -> torch.Tensor | None:
        """A uint8 image at the model's size and channels, still uint8 (None when it cannot stay uint8: a float
        image, or the RGB to grey conversion, which is computed in float as before).

        The resize runs on uint8 (torch's antialiased uint8 kernel: several times faster than the float one on a
        photo, and the same up to the rounding to whole grey levels). Loaders batch these images as uint8, a
        quarter of the bytes, and normalise whole batches on the device (:meth:`normalise`)."""
        if img.dtype != torch.uint8 or (self.in_chans == 1 and img.shape[0] != 1):
            return None
        if img.shape[-1] != self.image_size or img.shape[-2] != self.image_size:
            img = F.interpolate(img[None], size=(self.image_size, self.image_size), mode="bilinear", antialias=True,
                                align_corners=False)[0]
        if img.shape[0] != self.in_chans:  # grey to RGB repeats the channel; RGBA drops alpha
            img = img.expand(self.in_chans, -1, -1) if img.shape[0] == 1 else img[: self.in_chans]
        return img

    def normalise(self, batch: torch.Tensor) -> torch.Tensor:
        """A uint8 batch N×C×H×W of :meth:`pixels` images (on any device) -> the normalised float batch. The same
        operations as one image at a time, so the same numbers."""
        x = batch.to(torch.float32, memory_format=torch.contiguous_format)  # a channels-last batch: one pass
        return self._standardise(x.div_(255.0), in_place=True)

    def _standardise(self, x: torch.Tensor, in_place: bool = False) -> torch.Tensor:
        # in place on a batch: one float buffer instead of three (each new buffer of a 224 px batch costs page faults
        # that took longer than the arithmetic); the same operations, so the same numbers
        mean = torch.tensor(self.mean, device=x.device).view(-1, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(-1, 1, 1)
        return x.sub_(mean).div_(std) if in_place else (x - mean) / std

    def _float_path(self, img: torch.Tensor) -> torch.Tensor:
        if img.dtype == torch.uint8 and (img.shape[-1] != self.image_size or img.shape[-2] != self.image_size):
            img = F.interpolate(img[None], size=(self.image_size, self.image_size), mode="bilinear", antialias=True,
                                align_corners=False)[0]
        x = img.contiguous().float() / 255.0 if img.dtype == torch.uint8 else img.float()
        if x.shape[0] != self.in_chans:
            if self.in_chans == 1:  # ITU-R 601 luma, as PIL's "L" conversion
                x = (0.299 * x[0:1] + 0.587 * x[1:2] + 0.114 * x[2:3]) if x.shape[0] == 3 else x[:1]
            else:
                x = x.expand(self.in_chans, -1, -1) if x.shape[0] == 1 else x[: self.in_chans]
        if x.shape[-1] != self.image_size or x.shape[-2] != self.image_size:
            x = F.interpolate(x[None], size=(self.image_size, self.image_size), mode="bilinear",
                              antialias=True, align_corners=False)[0]
        return self._standardise(x)

    def to_dict(self) -> dict:
        return {"image_size": self.image_size, "in_chans": self.in_chans, "mean": list(self.mean),
                "std": list(self.std)}


VALIDATION_SEED = 7919


def validation_holdout(targets: torch.Tensor, num_classes: int, per_class: int) -> torch.Tensor:
    """Indices of the validation images: ``per_class`` training images of every class, the same for every run.

    The hold-out is drawn from a fixed generator, not the run's seed, so that ``forgetkit pretrain`` can leave
    exactly these images out and a forgetting run evaluated on them measures images its model never saw.
    """
    gen = torch.Generator().manual_seed(VALIDATION_SEED)
    held = []
    for c in range(num_classes):
        idx = torch.nonzero(targets == c).flatten()
        if per_class and len(idx) <= per_class:
            raise ForgetkitError(f"class {c} has {len(idx)} training images, too few to hold out {per_class} for "
                                 f"validation; lower val_per_class")
        held.append(idx[torch.randperm(len(idx), generator=gen)[:per_class]])
    return torch.sort(torch.cat(held)).values if held else torch.zeros(0, dtype=torch.long)


def held_out_mask(images: LabeledImages, per_class: int) -> torch.Tensor:
    """Which of ``images`` are validation images, as a boolean mask: the same images of a class whichever other
    classes the data holds. A model pre-trained on some classes of a source (a reference trained without the
    forgotten classes, ``data.classes``) thus holds out exactly the images the model trained on all of them holds
    out, and the two are scored on images neither saw."""
    if isinstance(images, RelabelledImages):
        return held_out_mask(images.parent, per_class)[images.indices]
    mask = torch.zeros(len(images.targets), dtype=torch.bool)
    mask[validation_holdout(images.targets, len(images.classes), per_class)] = True
    return mask


class LabeledImages(torch.utils.data.Dataset):
    """A dataset with a class list and integer targets; items are ``(image tensor, label)``.

    Labels always index ``classes`` (the original index space): subsets never renumber them.
    """

    classes: list[str]
    targets: torch.Tensor
    preprocess: Preprocess | None = None

    def __len__(self) -> int:
        return len(self.targets)

    def raw(self, index: int) -> torch.Tensor:
        raise NotImplementedError

    def __getitem__(self, index: int):
        return self.item(index)

    def item(self, index: int, defer: bool = False):
        """``(image, label)``: the image normalised for the model, or with ``defer`` its uint8
        :meth:`Preprocess.pixels` where it can stay uint8 (the loader then normalises the whole batch on the device,
        :class:`forgetkit.runtime.DeviceBatches`)."""
        img = self.raw(index)
        if self.preprocess is not None:
            pixels = self.preprocess.pixels(img) if defer else None
            img = pixels if pixels is not None else self.preprocess(img)
        return img, int(self.targets[index])

    def with_preprocess(self, preprocess: Preprocess) -> LabeledImages:
        self.preprocess = preprocess
        return self

    def subset(self, indices: torch.Tensor) -> SubsetImages:
        """The items at ``indices``, keeping labels and the class list."""
        return SubsetImages(self, torch.as_tensor(indices, dtype=torch.long))

    def indices_of(self, classes: Sequence[int]) -> torch.Tensor:
        """Indices of the items whose label is in ``classes``."""
        mask = torch.isin(self.targets, torch.as_tensor(list(classes), dtype=torch.long))
        return torch.nonzero(mask).flatten()


class SubsetImages(LabeledImages):
    """A view of some items of another dataset; shares its preprocessing."""

    def __init__(self, parent: LabeledImages, indices: torch.Tensor):
        self.parent, self.indices = parent, indices
        self.classes, self.targets = parent.classes, parent.targets[indices]

    @property
    def preprocess(self) -> Preprocess | None:
        return self.parent.preprocess

    def item(self, index: int, defer: bool = False):
        return self.parent.item(int(self.indices[index]), defer)

    def with_preprocess(self, preprocess: Preprocess) -> SubsetImages:
        self.parent.with_preprocess(preprocess)
        return self


class FlippedImages(LabeledImages):
    """Another dataset's images flipped ``horizontal`` (left to right) or ``vertical``, each class named
    ``'<class> flipped <way>'``: classes of the same domain that a model never saw, where a flip makes a new shape
    (a mirrored 3, a shoe upside down); the never-seen check's stand-ins (``eval.verify.novel_flip``)."""

    def __init__(self, parent: LabeledImages, way: str):
        self.parent, self.dim = parent, {"horizontal": -1, "vertical": -2}[way]
        self.classes, self.targets = [f"{name} flipped {way}" for name in parent.classes], parent.targets

    def raw(self, index: int) -> torch.Tensor:
        return self.parent.raw(index).flip(self.dim)

    def with_preprocess(self, preprocess: Preprocess) -> FlippedImages:
        self.preprocess = preprocess
        self.parent.with_preprocess(preprocess)  # a folder decodes to the model's channels
        return self


class UserImages(LabeledImages):
    """A user's ``torch.utils.data.Dataset`` of ``(image tensor, label)`` pairs, images already transformed for the
    model; labels index ``classes``. Targets are read from ``dataset.targets`` when it has them, else by one pass."""

    def __init__(self, dataset, classes: Sequence[str], what: str = "dataset"):
        self.dataset, self.classes = dataset, list(classes)
        targets = getattr(dataset, "targets", None)
        if targets is None:
            try:
                targets = [int(dataset[i][1]) for i in range(len(dataset))]
            except (TypeError, IndexError, ValueError, KeyError):
                raise ForgetkitError(f"the {what} must yield (image tensor, integer label) pairs") from None
        self.targets = torch.as_tensor(targets, dtype=torch.long).flatten()
        if len(self.targets) != len(dataset):
            raise ForgetkitError(f"the {what} has {len(dataset)} items but {len(self.targets)} targets")
        if len(self.targets) and (self.targets.min() < 0 or self.targets.max() >= len(self.classes)):
            raise ForgetkitError(f"the {what} has labels outside 0..{len(self.classes) - 1}; labels must index the "
                                 f"model's {len(self.classes)} classes")

    def item(self, index: int, defer: bool = False):  # the user's images are already the model's input
        image, label = self.dataset[index]
        return image, int(label)


def as_labeled(dataset, classes: Sequence[str], what: str = "dataset") -> LabeledImages:
    """``dataset`` as forgetkit's labelled images (unchanged if it already is one)."""
    return dataset if isinstance(dataset, LabeledImages) else UserImages(dataset, classes, what)


class TensorImages(LabeledImages):
    """Images held in memory as a uint8 tensor N×C×H×W (Fashion-MNIST, synthetic data)."""

    def __init__(self, images: torch.Tensor, targets: torch.Tensor, classes: list[str]):
        if images.ndim == 3:
            images = images[:, None]
        self.images, self.targets, self.classes = images, targets.long(), list(classes)

    def raw(self, index: int) -> torch.Tensor:
        return self.images[index]


class RelabelledImages(LabeledImages):
    """The images of some classes of another dataset, labelled by their place in a new class list (which must name
    only classes of the other dataset); shares its preprocessing."""

    def __init__(self, parent: LabeledImages, classes: list[str]):
        self.parent, self.classes = parent, list(classes)
        mapping = torch.full((len(parent.classes),), -1, dtype=torch.long)
        for i, name in enumerate(self.classes):
            mapping[parent.classes.index(name)] = i
        self.indices = torch.nonzero(mapping[parent.targets] >= 0).flatten()
        self.targets = mapping[parent.targets[self.indices]]

    def raw(self, index: int) -> torch.Tensor:
        return self.parent.raw(int(self.indices[index]))

    @property
    def preprocess(self) -> Preprocess | None:
        return self.parent.preprocess

    def item(self, index: int, defer: bool = False):
        return self.parent.item(int(self.indices[index]), defer)[0], int(self.targets[index])

    def with_preprocess(self, preprocess: Preprocess) -> RelabelledImages:
        self.parent.with_preprocess(preprocess)
        return self


class ConcatImages(LabeledImages):
    """The images of several datasets with disjoint class lists, one after the other; a part's labels are shifted
    past the earlier parts' classes. Shares its preprocessing with every part."""

    def __init__(self, parts: list[LabeledImages]):
        self.parts, self.classes, targets, self.starts = list(parts), [], [], []
        start = 0
        for part in self.parts:
            clash = set(self.classes) & set(part.classes)
            if clash:
                raise ForgetkitError(f"class {sorted(clash)[0]!r} is in two of the datasets being joined")
            targets.append(part.targets + len(self.classes))
            self.classes += list(part.classes)
            self.starts.append(start)
            start += len(part)
        self.targets = torch.cat(targets) if targets else torch.zeros(0, dtype=torch.long)

    def _locate(self, index: int) -> tuple[int, int]:
        for k in range(len(self.parts) - 1, -1, -1):
            if index >= self.starts[k]:
                return k, index - self.starts[k]
        raise IndexError(index)

    def raw(self, index: int) -> torch.Tensor:
        k, i = self._locate(index)
        return self.parts[k].raw(i)

    @property
    def preprocess(self) -> Preprocess | None:
        """The parts' preprocessing when they share one (else None: their images are then normalised one by one)."""
        kinds = {part.preprocess for part in self.parts}
        return kinds.pop() if len(kinds) == 1 else None

    def item(self, index: int, defer: bool = False):
        k, i = self._locate(int(index))
        defer = defer and self.preprocess is not None
        return self.parts[k].item(i, defer)[0], int(self.targets[index])

    def with_preprocess(self, preprocess: Preprocess) -> ConcatImages:
        for part in self.parts:
            part.with_preprocess(preprocess)
        return self


class FolderImages(LabeledImages):
    """Images on disk, one folder per class (``ROOT/<class>/<image>``), decoded to uint8 tensors when read: colour
    and grey JPEGs by simplejpeg where it is installed (the ``data`` extra), everything else by PIL (torchvision's
    own decoders are deprecated from 0.29 on)."""

    def __init__(self, paths: list[str], targets: list[int], classes: list[str]):
        self.paths, self.targets, self.classes = paths, torch.as_tensor(targets, dtype=torch.long), list(classes)
        self._pixels: dict[int, torch.Tensor] = {}  # decoded uint8 pixels at _pixels_for's size (PIXEL_CACHE)
        self._pixels_for: Preprocess | None = None
        self._kept = 0

    def __getstate__(self):  # a spawned worker starts with no kept pixels (they stay the parent's)
        return {**self.__dict__, "_pixels": {}, "_kept": 0}

    def __del__(self):
        if PIXEL_CACHE is not None:  # None while the interpreter shuts down
            PIXEL_CACHE["used"] -= getattr(self, "_kept", 0)

    def _keep(self, index: int, pixels: torch.Tensor) -> None:
        if PIXEL_CACHE["used"] + pixels.numel() <= PIXEL_CACHE["budget"]:
            self._pixels[index] = pixels
            self._kept += pixels.numel()
            PIXEL_CACHE["used"] += pixels.numel()

    def item(self, index: int, defer: bool = False):
        """As every dataset's, with the decoded pixels kept (:data:`PIXEL_CACHE`): a request draws its images many
        times, and decoding is most of the data path's cost."""
        if self.preprocess is None or not PIXEL_CACHE["budget"]:
            return super().item(index, defer)
        if self._pixels_for != self.preprocess:  # another model's size: the kept pixels are not its
            PIXEL_CACHE["used"] -= self._kept
            self._pixels, self._pixels_for, self._kept = {}, self.preprocess, 0
        pixels = self._pixels.get(index)
        if pixels is None:
            pixels = self.preprocess.pixels(self.raw(index))
            if pixels is None:  # stays float (RGB to grey): nothing to keep
                return super().item(index, defer)
            self._keep(index, pixels)
        return (pixels if defer else self.preprocess.normalise(pixels[None])[0]), int(self.targets[index])

    def raw(self, index: int) -> torch.Tensor:
        path = self.paths[index]
        grey = self.preprocess is not None and self.preprocess.in_chans == 1
        try:
            with open(path, "rb") as file:
                data = file.read()
            pixels = None if grey else decode_jpeg_rgb(data)
            if pixels is None:
                with Image.open(io.BytesIO(data)) as im:
                    pixels = np.array(im.convert("L" if grey else "RGB"))  # H×W(×C) uint8, one writable copy
        except (UnidentifiedImageError, OSError, SyntaxError) as err:
            raise ForgetkitError(f"cannot read image {path} ({err}); delete or replace the corrupt file") from None
        pixels = pixels[..., None] if pixels.ndim == 2 else pixels
        return torch.from_numpy(pixels).permute(2, 0, 1)


def decode_jpeg_rgb(data: bytes) -> np.ndarray | None:
    """A colour or grey JPEG's RGB pixels by simplejpeg, or None where it does not apply (not a JPEG, a CMYK one,
    simplejpeg not installed): PIL decodes those.

    simplejpeg wraps libjpeg-turbo's decoder as PIL does, with the same settings (accurate DCT, smooth chroma
    upsampling), so the pixels are PIL's (tests/test_scaling.py), in about half the time on 224 px images
    (docs/scaling.md). Grey models keep PIL, whose RGB to grey formula differs from the JPEG's own luma."""
    if _SIMPLEJPEG is None or not data.startswith(b"\xff\xd8"):
        return None
    try:
        if _SIMPLEJPEG.decode_jpeg_header(data)[2] not in ("YCbCr", "Gray"):
            return None
        return _SIMPLEJPEG.decode_jpeg(data, "RGB")
    except ValueError:  # a JPEG libjpeg-turbo's fast path refuses; PIL reports what is wrong with it
        return None


_SIMPLEJPEG = importlib.import_module("simplejpeg") if available("simplejpeg") else None

PIXEL_CACHE = {"budget": 0, "used": 0}
"""bytes of decoded image-folder pixels this process may keep, and keeps (``train.cache_gb``, set by the runtime;
process-wide like torch's thread count). Each image is kept once decoded, until the budget is spent; none is
evicted, so which images are kept depends only on the order they are first drawn."""


def set_pixel_cache(gib: float) -> None:
    PIXEL_CACHE["budget"] = int(gib * 2**30)


@dataclass
class DataSplits:
    """Train and test images of one dataset, with the same class list."""

    name: str
    train: LabeledImages
    test: LabeledImages

    @property
    def classes(self) -> list[str]:
        return self.train.classes

    def with_preprocess(self, preprocess: Preprocess) -> DataSplits:
        self.train.with_preprocess(preprocess)
        self.test.with_preprocess(preprocess)
        return self

    def select(self, classes: list[str]) -> DataSplits:
        """Only the images of ``classes``, labelled by their place in that list (itself when it is the same list)."""
        if list(classes) == list(self.classes):
            return self
        return DataSplits(self.name, RelabelledImages(self.train, classes), RelabelledImages(self.test, classes))

    def merged(self, other: DataSplits) -> DataSplits:
        """These images and ``other``'s, whose classes must be new ones: its classes come after these."""
        return DataSplits(self.name, ConcatImages([self.train, other.train]), ConcatImages([self.test, other.test]))
