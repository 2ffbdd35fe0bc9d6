"""PASCAL VOC 2012 (+ SBD SegmentationClassAug): id lists, image-level labels, images, masks.

The paper's repository shipped `train_aug.txt`, `cls_labels.npy` and friends as files; here they
are derived from the dataset itself: `train_aug` is every id with a SegmentationClassAug mask
minus `val`, and labels come from `Annotations/*.xml` as the reference's `cls_labels.npy` did
(every object named there, `difficult` and `truncated` ones included). `label_source="mask"`
takes them from the masks instead (the XML where an image has none); the two differ where an
annotated object is too small or too occluded to have pixels in the mask.
Labels are cached per dataset root and source, outside the root (datasets are often read-only),
each with the size and modification time of the file it came from: an edited XML or mask is read
again.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from wavecam.classes import IGNORE_INDEX, VOC_CLASSES
from wavecam.engine.cli import run_cli
from wavecam.errors import BadFileError, DatasetRootError, WavecamError
from wavecam.io import load_npz, load_png, save_npz, user_cache

VOC_LAYOUT_HELP = (
    "Expected the PASCAL VOC 2012 layout: ROOT/JPEGImages/<id>.jpg, ROOT/SegmentationClass/<id>.png, "
    "ROOT/ImageSets/Segmentation/{train,val}.txt, ROOT/Annotations/<id>.xml, and SBD's masks in "
    "ROOT/SegmentationClassAug/<id>.png for train_aug (see the README, 'Datasets')."
)
SPLITS = ("train", "val", "trainval", "train_aug", "test")
LABEL_SOURCES = ("xml", "mask")


def default_cache_dir(root: Path) -> Path:
    return user_cache() / hashlib.sha1(str(root.resolve()).encode()).hexdigest()[:16]


def file_stamp(path: Path) -> tuple[int, int]:
    """(size, modification time in ns) of a cache's source file; (-1, -1) for none. A cached value
    whose source's stamp changed is derived again."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return (-1, -1)
    return (st.st_size, st.st_mtime_ns)


def read_id_list(path: str | os.PathLike) -> list[str]:
    """Ids from a list file. Accepts plain ids and DeepLab-style lines
    (`/JPEGImages/2007_000032.jpg /SegmentationClassAug/2007_000032.png`)."""
    path = Path(path)
    if not path.is_file():
        raise WavecamError(f"id list not found: {path}; give an existing file or one of {', '.join(SPLITS)}")
    ids = []
    for line in path.read_text().splitlines():
        token = line.strip().split(" ")[0] if line.strip() else ""
        if token:
            ids.append(Path(token).stem)
    return ids


def load_image(path: Path, image_id: str) -> np.ndarray:
    """RGB uint8 H x W x 3; one readable error for a missing or corrupt file."""
    if not path.is_file():
        raise WavecamError(f"image for id {image_id} not found: {path}; check the id list and the dataset root")
    try:
        with Image.open(path) as img:
            return np.array(img.convert("RGB"))  # writable: pydensecrf and in-place ops need it
    except OSError as e:
        raise BadFileError(
            f"{path}: unreadable image for id {image_id} ({e}); replace the file or remove the id from the list"
        ) from e


class VOC12:
    """A VOC 2012 root. All derived lists and labels refer to 0-based foreground classes."""

    class_names = VOC_CLASSES
    num_classes = len(VOC_CLASSES)
    SPLITS = SPLITS

    def __init__(self, root: str | os.PathLike, cache_dir: str | os.PathLike | None = None,
                 label_source: str = "xml"):
        if label_source not in LABEL_SOURCES:
            raise WavecamError(f"unknown VOC label source {label_source!r}: choose one of {', '.join(LABEL_SOURCES)}")
        self.label_source = label_source
        self.root = Path(root)
        if not self.root.is_dir():
            raise DatasetRootError(f"VOC 2012 root {self.root}: folder not found. {VOC_LAYOUT_HELP}")
        if not (self.root / "JPEGImages").is_dir():
            raise DatasetRootError(f"VOC 2012 root {self.root}: no JPEGImages folder. {VOC_LAYOUT_HELP}")
        self.cache_dir = Path(cache_dir) if cache_dir else default_cache_dir(self.root)
        self._labels: dict[str, tuple[np.ndarray, tuple[int, int]]] | None = None

    # --- files -------------------------------------------------------------------------------
    def image_path(self, image_id: str) -> Path:
        return self.root / "JPEGImages" / f"{image_id}.jpg"

    def load_image(self, image_id: str) -> np.ndarray:
        return load_image(self.image_path(image_id), image_id)

    def mask_path(self, image_id: str) -> Path | None:
        """The official mask if there is one (it marks borders 255), else SBD's."""
        for folder in ("SegmentationClass", "SegmentationClassAug"):
            p = self.root / folder / f"{image_id}.png"
            if p.is_file():
                return p
        return None

    def load_gt(self, image_id: str) -> np.ndarray:
        """Ground-truth label map (0 background, 1..20, 255 ignore)."""
        p = self.mask_path(image_id)
        if p is None:
            raise WavecamError(
                f"no ground-truth mask for id {image_id} under {self.root}/SegmentationClass or "
                "SegmentationClassAug; evaluate on a split with masks (train or val)"
            )
        return load_png(p)

    # --- id lists ----------------------------------------------------------------------------
    def split(self, name_or_path: str | os.PathLike) -> list[str]:
        """Ids of a named split (train, val, trainval, train_aug; test in VOC's test release) or of a
        list file."""
        name = str(name_or_path)
        if name in ("train", "val", "trainval", "test"):
            p = self.root / "ImageSets" / "Segmentation" / f"{name}.txt"
            if not p.is_file():
                raise WavecamError(f"{p} not found: the {name} split needs it. {VOC_LAYOUT_HELP}")
            return read_id_list(p)
        if name == "train_aug":
            aug = self.root / "SegmentationClassAug"
            if not aug.is_dir():
                raise WavecamError(
                    f"{aug} not found: train_aug needs SBD's SegmentationClassAug masks. {VOC_LAYOUT_HELP}"
                )
            val = set(self.split("val"))
            return sorted(p.stem for p in aug.glob("*.png") if p.stem not in val)
        return read_id_list(name)

    def check_ids(self, ids: list[str]) -> None:
        missing = [i for i in ids if not self.image_path(i).is_file()]
        if missing:
            raise WavecamError(
                f"{len(missing)} id(s) have no image, e.g. {missing[0]} (looked for {self.image_path(missing[0])}); "
                "check the id list against the VOC root"
            )

    # --- image-level labels --------------------------------------------------------------------
    def labels(self, ids: list[str]) -> np.ndarray:
        """(N, 20) float32 multi-hot labels, computed once per image and cached until the file it
        comes from changes."""
        cache = self._load_label_cache()
        stamps = {i: file_stamp(self._label_file(i)) for i in ids}
        todo = [i for i in ids if i not in cache or cache[i][1] != stamps[i]]
        if todo:
            for i in tqdm(todo, desc="image labels", disable=len(todo) < 200, leave=False):
                cache[i] = (self._label_of(i), stamps[i])
            self._save_label_cache(cache)
        return np.stack([cache[i][0] for i in ids]).astype(np.float32) if ids else np.zeros((0, self.num_classes))

    def _label_file(self, image_id: str) -> Path:
        """The file an image's label comes from: its XML, or with the label source `mask` its mask
        where it has one."""
        mask = self.mask_path(image_id) if self.label_source == "mask" else None
        return mask if mask is not None else self.root / "Annotations" / f"{image_id}.xml"

    def _label_of(self, image_id: str) -> np.ndarray:
        label = np.zeros(self.num_classes, dtype=np.uint8)
        mask = self.mask_path(image_id) if self.label_source == "mask" else None
        if mask is not None:
            values = np.unique(load_png(mask))
            values = values[(values > 0) & (values != IGNORE_INDEX)]
            if values.size and values.max() > self.num_classes:
                raise BadFileError(f"{mask}: label {values.max()} is not a VOC class index (1..20)")
            label[values - 1] = 1
            return label
        xml = self.root / "Annotations" / f"{image_id}.xml"
        if not xml.is_file():
            if self.label_source == "mask":
                raise WavecamError(
                    f"no label source for id {image_id}: neither a mask in SegmentationClass(Aug) nor {xml}"
                )
            raise WavecamError(f"{xml} not found: image labels come from VOC's Annotations/*.xml as the "
                               "reference's do; restore the file, or take labels from the masks with "
                               "the label source 'mask' (--voc12_label_source mask)")
        try:
            names = [o.findtext("name", "").strip() for o in ET.parse(xml).getroot().iter("object")]
        except ET.ParseError as e:
            raise BadFileError(f"{xml}: malformed XML ({e})") from e
        unknown = sorted(set(names) - set(VOC_CLASSES))
        if unknown:
            raise BadFileError(f"{xml}: unknown class name(s) {unknown}")
        for n in names:
            label[VOC_CLASSES.index(n)] = 1
        return label

    def _cache_file(self) -> Path:
        return self.cache_dir / f"voc12_labels_{self.label_source}.npz"

    def _load_label_cache(self) -> dict[str, tuple[np.ndarray, tuple[int, int]]]:
        """id -> (label, stamp of its source file)."""
        if self._labels is None:
            self._labels = {}
            f = self._cache_file()
            if f.is_file():
                try:
                    data = load_npz(f)
                    stamps = [tuple(int(v) for v in row) for row in data["stamps"]]
                    self._labels = dict(zip(data["ids"].tolist(), zip(data["labels"], stamps)))
                except (BadFileError, KeyError):
                    self._labels = {}  # a bad cache (or one without stamps) is only a cache: rebuild it
        return self._labels

    def _save_label_cache(self, cache: dict[str, tuple[np.ndarray, tuple[int, int]]]) -> None:
        ids = sorted(cache)
        try:
            save_npz(self._cache_file(), ids=np.array(ids, dtype=str), labels=np.stack([cache[i][0] for i in ids]),
                     stamps=np.array([cache[i][1] for i in ids], dtype=np.int64).reshape(-1, 2))
        except OSError:
            pass  # an unwritable cache folder costs time on the next run, nothing else


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Derive and summarise the VOC 2012 id lists and image-level labels.")
    p.add_argument("--voc12_root", required=True)
    p.add_argument("--cache_dir", default=None)
    p.add_argument("--voc12_label_source", choices=LABEL_SOURCES, default="xml")
    args = p.parse_args(argv)

    def summarise() -> None:
        ds = VOC12(args.voc12_root, args.cache_dir, args.voc12_label_source)
        for s in SPLITS[:-1]:  # test has no labels
            ids = ds.split(s)
            labels = ds.labels(ids)
            print(f"{s:<10} {len(ids):6d} images  {labels.sum(0).astype(int).tolist()}")

    return run_cli(summarise, "--cache_dir")


if __name__ == "__main__":
    sys.exit(main())
