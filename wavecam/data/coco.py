"""MS COCO 2014: id lists, 80-class image-level labels, images and semantic masks.

Two layouts are read. The official download (ROOT/train2014/, ROOT/val2014/,
ROOT/annotations/instances_{train,val}2014.json) is parsed with pycocotools: labels come from the
annotations, and the semantic masks are rendered once from them into the cache. The VOC-style
conversion some users have (ROOT/JPEGImages/{train,val}/, ROOT/SegmentationClass/{train,val}/ with
masks already rendered) is read as it is, labels coming from the masks.

Ids are file stems (`COCO_train2014_000000000009`); the prefix tells the split. Mask values are 0
background and 1..80 for the classes (contiguous, in the order of COCO's category ids). An image's
label holds every class it has an annotation of, crowds included: a crowd of people still shows
people.

Two choices follow ReCAM's COCO code by default, each with the stricter alternative as an option:
- which images a split holds (`split_images`): ReCAM reads its splits through torchvision's
  `CocoDetection`, i.e. every image of the annotation file, sorted by id, including the few hundred
  with no annotation at all (label all zero, evaluated as all background): `all`. `annotated` keeps
  the images with at least one non-crowd object, those a segmentation can be scored on.
- what crowd regions are in the masks (`crowd`): ReCAM's `annToMask.py` paints the non-crowd
  annotations only, so a crowd is `background` (0); `ignore` paints it 255 over the instances, and
  the evaluation skips those pixels.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import multiprocessing
import os
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
from tqdm import tqdm

from wavecam.classes import COCO_CATEGORIES, IGNORE_INDEX
from wavecam.data.voc import default_cache_dir, file_stamp, load_image, read_id_list
from wavecam.engine.cli import run_cli
from wavecam.errors import BadFileError, DatasetRootError, WavecamError
from wavecam.io import is_complete, load_npz, load_png, save_npz, save_png

log = logging.getLogger("wavecam")

COCO_LAYOUT_HELP = (
    "Expected the official COCO 2014 layout: ROOT/train2014/<id>.jpg, ROOT/val2014/<id>.jpg and "
    "ROOT/annotations/instances_{train,val}2014.json; or the VOC-style one: ROOT/JPEGImages/{train,val}/<id>.jpg "
    "with masks in ROOT/SegmentationClass/{train,val}/<id>.png (see the README, 'Datasets')."
)
SPLITS = ("train", "val", "train_all", "val_all")
CATEGORY_IDS = tuple(cid for cid, _ in sorted(COCO_CATEGORIES))
CATEGORY_INDEX = {cid: i for i, cid in enumerate(CATEGORY_IDS)}
COCO_CLASSES = tuple(name for _, name in sorted(COCO_CATEGORIES))
SPLIT_IMAGES = ("all", "annotated")  # the first is ReCAM's
CROWD = ("background", "ignore")  # the first is ReCAM's


def split_of(image_id: str) -> str:
    for split in ("train", "val"):
        if image_id.startswith(f"COCO_{split}2014_"):
            return split
    raise WavecamError(
        f"{image_id!r} is not a COCO 2014 id: ids are file stems such as COCO_train2014_000000000009 "
        "or COCO_val2014_000000000042, whose prefix tells the split"
    )


def render_mask(image: dict, anns: list[dict], crowd: str = "background") -> np.ndarray:
    """One image's semantic mask (H, W) uint8 from its COCO annotations: instances painted in
    annotation order (later ones win where they overlap). Crowds are left out (`background`, as
    ReCAM's annToMask.py), or painted 255 over the instances (`ignore`)."""
    from pycocotools.coco import COCO

    # annToMask only looks the image's size up, so a one-image index is enough.
    api = COCO()
    api.imgs = {image["id"]: image}
    mask = np.zeros((image["height"], image["width"]), np.uint8)
    instances = [a for a in anns if not a.get("iscrowd")]
    crowds = [a for a in anns if a.get("iscrowd")] if crowd == "ignore" else []
    for ann in instances + crowds:
        value = IGNORE_INDEX if ann.get("iscrowd") else CATEGORY_INDEX[ann["category_id"]] + 1
        mask[api.annToMask(ann).astype(bool)] = value
    return mask


def _render_task(task: tuple[str, dict, list[dict], str]) -> None:
    path, image, anns, crowd = task
    save_png(path, render_mask(image, anns, crowd))


def _mask_label(path: Path) -> np.ndarray:
    """(80,) uint8 multi-hot label of the classes a rendered mask shows."""
    values = np.unique(load_png(path))
    values = values[(values > 0) & (values != IGNORE_INDEX)]
    if values.size and values.max() > len(CATEGORY_IDS):
        raise BadFileError(f"{path}: value {values.max()} is neither a COCO class (1..80) nor {IGNORE_INDEX}")
    label = np.zeros(len(CATEGORY_IDS), np.uint8)
    label[values - 1] = 1
    return label


def _parallel_map(fn: Callable, items: list, jobs: int, desc: str) -> list:
    """`fn` over `items`, in order, in `jobs` processes, with a progress bar for long runs."""
    bar = {"total": len(items), "desc": desc, "disable": len(items) < 200, "leave": False}
    if jobs <= 1 or len(items) <= 1:
        return list(tqdm(map(fn, items), **bar))
    with multiprocessing.Pool(min(jobs, len(items))) as pool:
        chunks = max(1, min(64, len(items) // (4 * jobs)))
        return list(tqdm(pool.imap(fn, items, chunksize=chunks), **bar))


class _SplitIndex:
    """What labels and split lists need of one split, cached as one npz. It holds every image with
    its `annotated` flag and labels that count crowds under either policy, so it does not depend on
    `split_images` or `crowd`: switching them can never meet a stale index. `sources` are the stamps
    (size, modification time) of the files it was derived from, so an edited annotation file or mask
    is indexed again."""

    def __init__(self, ids: list[str], labels: np.ndarray, annotated: np.ndarray, sources: np.ndarray):
        # annotated: the image has a non-crowd annotation (official layout) or a foreground pixel (VOC-style).
        self.ids, self.labels, self.annotated = ids, labels, annotated
        self.sources = np.asarray(sources, dtype=np.int64).reshape(-1, 2)
        self.row = {image_id: i for i, image_id in enumerate(ids)}

    def save(self, path: Path) -> None:
        try:
            save_npz(path, ids=np.array(self.ids, dtype=str), labels=self.labels, annotated=self.annotated,
                     sources=self.sources)
        except OSError:
            pass  # an unwritable cache folder costs time on the next run, nothing else

    @classmethod
    def load(cls, path: Path, sources: np.ndarray) -> _SplitIndex | None:
        """The cached index, if it was derived from files with these stamps."""
        if not path.is_file():
            return None
        try:
            data = load_npz(path)
            index = cls(data["ids"].tolist(), data["labels"], data["annotated"], data["sources"])
        except (BadFileError, KeyError):
            return None  # a bad cache is only a cache: rebuild it
        return index if np.array_equal(index.sources, np.asarray(sources).reshape(-1, 2)) else None


class COCO2014:
    """A COCO 2014 root in the official or the VOC-style layout. Labels refer to 0-based classes."""

    class_names = COCO_CLASSES
    num_classes = len(COCO_CLASSES)
    SPLITS = SPLITS

    def __init__(self, root: str | os.PathLike, cache_dir: str | os.PathLike | None = None, jobs: int | None = None,
                 split_images: str = "all", crowd: str = "background"):
        """`split_images` and `crowd` as in the module docstring; both default to ReCAM's choice."""
        if split_images not in SPLIT_IMAGES:
            raise WavecamError(f"COCO split images {split_images!r}: choose one of {', '.join(SPLIT_IMAGES)}")
        if crowd not in CROWD:
            raise WavecamError(f"COCO crowd policy {crowd!r}: choose one of {', '.join(CROWD)}")
        self.split_images, self.crowd = split_images, crowd
        self.root = Path(root)
        if not self.root.is_dir():
            raise DatasetRootError(f"COCO 2014 root {self.root}: folder not found. {COCO_LAYOUT_HELP}")
        if any((self.root / d).is_dir() for d in ("annotations", "train2014", "val2014")):
            self.layout = "official"
        elif (self.root / "JPEGImages").is_dir():
            self.layout = "voc"
        else:
            raise DatasetRootError(
                f"COCO 2014 root {self.root}: neither annotations/, train2014/, val2014/ nor JPEGImages/ found. "
                f"{COCO_LAYOUT_HELP}"
            )
        self.cache_dir = Path(cache_dir) if cache_dir else default_cache_dir(self.root)
        self.jobs = jobs or os.cpu_count() or 1
        self._index: dict[str, _SplitIndex] = {}
        self._mask_folder: dict[str, str] = {}
        self._api: dict[str, tuple] = {}

    # --- files -------------------------------------------------------------------------------
    def image_path(self, image_id: str) -> Path:
        split = split_of(image_id)
        if self.layout == "voc":
            return self.root / "JPEGImages" / split / f"{image_id}.jpg"
        return self.root / f"{split}2014" / f"{image_id}.jpg"

    def load_image(self, image_id: str) -> np.ndarray:
        path = self.image_path(image_id)
        if not path.is_file():
            raise WavecamError(f"image for id {image_id} not found: {path}. {COCO_LAYOUT_HELP}")
        return load_image(path, image_id)

    @property
    def rendered_mask_dir(self) -> Path:
        """Where the official layout's masks are cached: a folder named for the crowd policy, so
        that masks rendered under the other policy are never read."""
        return self.cache_dir / f"coco_masks_crowd_{self.crowd}"

    def mask_path(self, image_id: str) -> Path:
        """The VOC-style layout's mask, or where the official layout's rendered mask is cached: in a
        folder named for the split and the stamp of its annotation file, so that masks rendered from
        an older annotation file are never read."""
        split = split_of(image_id)
        if self.layout == "voc":
            return self.root / "SegmentationClass" / split / f"{image_id}.png"
        if split not in self._mask_folder:
            size, mtime = file_stamp(self._annotation_file(split))
            self._mask_folder[split] = f"{split}_{size}_{mtime}"
        return self.rendered_mask_dir / self._mask_folder[split] / f"{image_id}.png"

    def load_gt(self, image_id: str) -> np.ndarray:
        """Ground-truth label map (0 background, 1..80; crowds 0 or 255 as `crowd` says); rendered
        now if not cached yet. The VOC-style layout's masks are returned as they are."""
        path = self.mask_path(image_id)
        if self.layout == "voc" and not path.is_file():
            raise WavecamError(f"no ground-truth mask for id {image_id}: {path} not found. {COCO_LAYOUT_HELP}")
        if not is_complete(path):
            self.prepare_masks([image_id])
        return load_png(path)

    def prepare_masks(self, ids: list[str]) -> int:
        """Render the masks of `ids` that are not cached yet, in `jobs` processes; return how many
        were rendered. The VOC-style layout has its masks already, so there it renders none."""
        if self.layout == "voc":
            return 0
        todo = [i for i in ids if not is_complete(self.mask_path(i))]
        for split in ("train", "val"):
            split_todo = [i for i in todo if split_of(i) == split]
            if split_todo:
                api, image_of = self._coco_api(split)
                self._require_known(split_todo, image_of, split)
                tasks = [(str(self.mask_path(i)), api.imgs[image_of[i]], api.imgToAnns[image_of[i]], self.crowd)
                         for i in split_todo]
                _parallel_map(_render_task, tasks, self.jobs, f"COCO {split} masks")
        return len(todo)

    # --- id lists ----------------------------------------------------------------------------
    def split(self, name_or_path: str | os.PathLike) -> list[str]:
        """Ids of a named split or of a list file, sorted. `train` and `val` hold the images that
        `split_images` says (every image, or those with a non-crowd object: a class pixel in the
        VOC-style layout); `train_all` and `val_all` every image whatever it says."""
        name = str(name_or_path)
        if name in ("train", "val"):
            if self.split_images == "all":
                return self._all_ids(name)
            index = self._split_index(name)
            return [i for i, keep in zip(index.ids, index.annotated) if keep]
        if name in ("train_all", "val_all"):
            return self._all_ids(name.removesuffix("_all"))
        if not Path(name).is_file():
            raise WavecamError(f"id list not found: {name}; give an existing file or one of {', '.join(SPLITS)}")
        return read_id_list(name)

    def _all_ids(self, split: str) -> list[str]:
        if self.layout == "official":
            return self._split_index(split).ids
        folder = self.root / "JPEGImages" / split
        if not folder.is_dir():
            raise WavecamError(f"{folder} not found: the {split}_all split needs it. {COCO_LAYOUT_HELP}")
        return sorted(p.stem for p in folder.glob("*.jpg"))

    def check_ids(self, ids: list[str]) -> None:
        missing = [i for i in ids if not self.image_path(i).is_file()]
        if missing:
            raise WavecamError(
                f"{len(missing)} id(s) have no image, e.g. {missing[0]} (looked for {self.image_path(missing[0])}); "
                f"check the id list against the COCO root. {COCO_LAYOUT_HELP}"
            )

    # --- image-level labels --------------------------------------------------------------------
    def labels(self, ids: list[str]) -> np.ndarray:
        """(N, 80) float32 multi-hot labels, derived once per split and cached."""
        out = np.zeros((len(ids), self.num_classes), np.float32)
        for n, image_id in enumerate(ids):
            index = self._split_index(split_of(image_id))
            row = index.row.get(image_id)
            if row is None:
                raise self._no_label_error(image_id)
            out[n] = index.labels[row]
        return out

    def _no_label_error(self, image_id: str) -> WavecamError:
        if self.layout == "voc":
            return WavecamError(f"no label for id {image_id}: its mask {self.mask_path(image_id)} is missing. "
                                f"{COCO_LAYOUT_HELP}")
        return WavecamError(f"no label for id {image_id}: it is not in {self._annotation_file(split_of(image_id))}")

    def _split_index(self, split: str) -> _SplitIndex:
        if split not in self._index:
            cache = self.cache_dir / f"coco_{split}_index.npz"
            index = _SplitIndex.load(cache, self._index_sources(split)[1])
            if index is None:
                index = self._build_index(split)
                index.save(cache)
            self._index[split] = index
        return self._index[split]

    def _index_sources(self, split: str) -> tuple[list[Path], np.ndarray]:
        """The files a split's index is derived from, and their stamps: the VOC-style layout's masks,
        or the official layout's annotation file."""
        if self.layout == "voc":
            folder = self.root / "SegmentationClass" / split
            if not folder.is_dir():
                raise WavecamError(f"{folder} not found: labels of the {split} split come from it. {COCO_LAYOUT_HELP}")
            paths = sorted(folder.glob("*.png"))
        else:
            paths = [self._annotation_file(split)]
        return paths, np.array([file_stamp(p) for p in paths], dtype=np.int64).reshape(-1, 2)

    def _build_index(self, split: str) -> _SplitIndex:
        paths, sources = self._index_sources(split)
        if self.layout == "voc":
            labels = _parallel_map(_mask_label, paths, self.jobs, f"COCO {split} labels")
            ids = [p.stem for p in paths]
            labels = np.stack(labels) if labels else np.zeros((0, self.num_classes), np.uint8)
            return _SplitIndex(ids, labels, labels.any(axis=1), sources)
        api, image_of = self._coco_api(split)
        ids = sorted(image_of)
        labels = np.zeros((len(ids), self.num_classes), np.uint8)
        annotated = np.zeros(len(ids), bool)
        for n, image_id in enumerate(ids):
            for ann in api.imgToAnns[image_of[image_id]]:
                labels[n, CATEGORY_INDEX[ann["category_id"]]] = 1
                annotated[n] |= not ann.get("iscrowd")
        return _SplitIndex(ids, labels, annotated, sources)

    # --- the annotation files ------------------------------------------------------------------
    def _annotation_file(self, split: str) -> Path:
        return self.root / "annotations" / f"instances_{split}2014.json"

    def _coco_api(self, split: str) -> tuple:
        """pycocotools' index of one split and a map from file stem to COCO image id, loaded on
        first use: the train file takes a while and gigabytes of memory."""
        if split not in self._api:
            path = self._annotation_file(split)
            if not path.is_file():
                raise WavecamError(f"annotation file not found: {path}. {COCO_LAYOUT_HELP}")
            self._api[split] = self._load_api(path)
        return self._api[split]

    @staticmethod
    def _load_api(path: Path) -> tuple:
        from pycocotools.coco import COCO

        log.info("loading %s", path)
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its timings
                api = COCO(str(path))
        except (json.JSONDecodeError, UnicodeDecodeError, AssertionError, KeyError, TypeError) as e:
            raise BadFileError(f"{path}: not a COCO instances file ({type(e).__name__}: {e})") from e
        unknown = sorted({a["category_id"] for a in api.anns.values()} - CATEGORY_INDEX.keys())
        if unknown:
            raise BadFileError(f"{path}: category id(s) {unknown} are not among COCO's 80 categories")
        image_of = {Path(img["file_name"]).stem: img_id for img_id, img in api.imgs.items()}
        return api, image_of

    def _require_known(self, ids: list[str], image_of: dict, split: str) -> None:
        unknown = [i for i in ids if i not in image_of]
        if unknown:
            raise WavecamError(
                f"{len(unknown)} id(s) are not in {self._annotation_file(split)}, e.g. {unknown[0]}; "
                "check the id list against the COCO root"
            )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description="Derive the COCO 2014 labels and render the train and val masks once, into the cache."
    )
    p.add_argument("--mscoco_root", required=True)
    p.add_argument("--cache_dir", default=None)
    p.add_argument("--jobs", type=int, default=None, help="worker processes (default: every CPU)")
    p.add_argument("--coco_split_images", choices=SPLIT_IMAGES, default=SPLIT_IMAGES[0],
                   help="images of the train and val splits: all (ReCAM's) or annotated (a non-crowd object)")
    p.add_argument("--coco_crowd", choices=CROWD, default=CROWD[0],
                   help="crowd regions in the masks: background (ReCAM's) or ignore (255)")
    args = p.parse_args(argv)

    def prepare() -> None:
        ds = COCO2014(args.mscoco_root, args.cache_dir, args.jobs, args.coco_split_images, args.coco_crowd)
        for s in ("train", "val"):
            ids = ds.split(s)
            labels = ds.labels(ids)
            rendered = ds.prepare_masks(ids)
            print(f"{s:<6} {len(ids):6d} images of {len(ds.split(f'{s}_all')):6d}  "
                  f"{labels.sum(1).mean() if len(ids) else 0:.2f} classes per image  "
                  f"masks: {rendered} rendered now, {len(ids) - rendered} already there")
        if ds.layout == "official":
            print(f"masks (crowds as {ds.crowd}) in {ds.rendered_mask_dir}")

    return run_cli(prepare, "--cache_dir")


if __name__ == "__main__":
    sys.exit(main())
