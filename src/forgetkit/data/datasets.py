"""In-memory and on-disk labelled image datasets, with the model's preprocessing applied per item."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from ..errors import ForgetkitError


@dataclass(frozen=True)
class Preprocess:
    """What a model expects as input; stored in every checkpoint manifest so data and model always agree."""

    image_size: int = field(metadata={"help": "square input side in pixels; images are resized to it"})
    in_chans: int = field(metadata={"help": "1 (grey) or 3 (RGB); images are converted to it"})
    mean: tuple[float, ...] = field(default=(0.5,), metadata={"help": "per-channel mean subtracted after /255"})
    std: tuple[float, ...] = field(default=(0.5,), metadata={"help": "per-channel std divided after the mean"})

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        """uint8 or [0,1] float C×H×W tensor -> normalised float tensor of the model's shape.

        A uint8 image is resized before it becomes float (torch's uint8 antialiased kernel: several times faster
        than the float one on a large photo, and the same up to the rounding to whole grey levels)."""
        if img.dtype == torch.uint8 and (img.shape[-1] != self.image_size or img.shape[-2] != self.image_size):
            img = F.interpolate(img[None], size=(self.image_size, self.image_size), mode="bilinear", antialias=True,
                                align_corners=False)[0]
        # a decoded image is channels-last in memory: the float ops, and a batch's stacking, are faster on a
        # contiguous copy (the values are the same)
        img = img.contiguous()
        x = img.float() / 255.0 if img.dtype == torch.uint8 else img.float()
        if x.shape[0] != self.in_chans:
            if self.in_chans == 1:  # ITU-R 601 luma, as PIL's "L" conversion
                x = (0.299 * x[0:1] + 0.587 * x[1:2] + 0.114 * x[2:3]) if x.shape[0] == 3 else x[:1]
            else:
                x = x.expand(self.in_chans, -1, -1) if x.shape[0] == 1 else x[: self.in_chans]
        if x.shape[-1] != self.image_size or x.shape[-2] != self.image_size:
            x = F.interpolate(x[None], size=(self.image_size, self.image_size), mode="bilinear",
                              antialias=True, align_corners=False)[0]
        mean = torch.tensor(self.mean).view(-1, 1, 1)
        std = torch.tensor(self.std).view(-1, 1, 1)
        return (x - mean) / std

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
        img = self.raw(index)
        if self.preprocess is not None:
            img = self.preprocess(img)
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

    def __getitem__(self, index: int):
        return self.parent[int(self.indices[index])]

    def with_preprocess(self, preprocess: Preprocess) -> SubsetImages:
        self.parent.with_preprocess(preprocess)
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

    def __getitem__(self, index: int):
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

    def __getitem__(self, index: int):
        return self.parent[int(self.indices[index])][0], int(self.targets[index])

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

    def __getitem__(self, index: int):
        k, i = self._locate(int(index))
        return self.parts[k][i][0], int(self.targets[index])

    def with_preprocess(self, preprocess: Preprocess) -> ConcatImages:
        for part in self.parts:
            part.with_preprocess(preprocess)
        self.preprocess = preprocess
        return self


class FolderImages(LabeledImages):
    """Images on disk, one folder per class (``ROOT/<class>/<image>``), decoded with PIL to uint8 tensors when
    read (torchvision's own decoders are deprecated from 0.29 on)."""

    def __init__(self, paths: list[str], targets: list[int], classes: list[str]):
        self.paths, self.targets, self.classes = paths, torch.as_tensor(targets, dtype=torch.long), list(classes)

    def raw(self, index: int) -> torch.Tensor:
        path = self.paths[index]
        try:
            with Image.open(path) as im:
                im = im.convert("L" if self.preprocess is not None and self.preprocess.in_chans == 1 else "RGB")
                pixels = np.array(im)  # H×W(×C) uint8, one (writable) copy out of PIL
        except (UnidentifiedImageError, OSError, SyntaxError) as err:
            raise ForgetkitError(f"cannot read image {path} ({err}); delete or replace the corrupt file") from None
        pixels = pixels[..., None] if pixels.ndim == 2 else pixels
        return torch.from_numpy(pixels).permute(2, 0, 1)


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
