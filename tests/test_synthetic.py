import hashlib
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from wavecam.classes import COCO_CATEGORIES, IGNORE_INDEX, VOC_CLASSES, voc_palette
from wavecam.data.synthetic import make_synthetic_coco, make_synthetic_voc, rle_uncompressed

# pycocotools' decoder trips NumPy 2's copy-keyword deprecation; that is its business, not ours.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")

REPO = Path(__file__).resolve().parents[1]
N_TRAIN, N_VAL = 40, 10


def tree_hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def read_ids(path: Path) -> list[str]:
    return path.read_text().split()


def xml_classes(path: Path) -> set[int]:
    return {VOC_CLASSES.index(o.findtext("name")) + 1 for o in ET.parse(path).getroot().iter("object")}


@pytest.fixture(scope="module")
def voc_cli(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("voc_cli")
    subprocess.run([sys.executable, "-m", "wavecam.data.synthetic", "--out", str(out), "--n-train", str(N_TRAIN),
                    "--n-val", str(N_VAL), "--seed", "0"], cwd=REPO, check=True, capture_output=True)
    return out


@pytest.fixture(scope="module")
def coco(tmp_path_factory) -> Path:
    return make_synthetic_coco(tmp_path_factory.mktemp("coco"), n_train=12, n_val=4, seed=0)


def test_api_in_parallel_matches_cli_byte_for_byte(voc_cli, tmp_path):
    api = make_synthetic_voc(tmp_path, n_train=N_TRAIN, n_val=N_VAL, seed=0, jobs=2)
    assert tree_hashes(api) == tree_hashes(voc_cli)


def test_another_seed_gives_other_images(tmp_path):
    a = tree_hashes(make_synthetic_voc(tmp_path / "a", n_train=4, n_val=2, seed=0))
    b = tree_hashes(make_synthetic_voc(tmp_path / "b", n_train=4, n_val=2, seed=1))
    assert a.keys() == b.keys()
    assert all(a[k] != b[k] for k in a if k.startswith("JPEGImages"))


def test_voc_layout(voc_cli):
    sets = voc_cli / "ImageSets"
    train_aug, val = read_ids(sets / "Segmentation/train_aug.txt"), read_ids(sets / "Segmentation/val.txt")
    seg_train = read_ids(sets / "Segmentation/train.txt")
    assert len(train_aug) == N_TRAIN and len(val) == N_VAL and not set(train_aug) & set(val)
    assert set(seg_train) < set(train_aug) and 0.3 * N_TRAIN <= len(seg_train) <= 0.7 * N_TRAIN
    assert read_ids(sets / "Segmentation/trainval.txt") == sorted(seg_train + val)
    for name in ("train", "val", "train_aug", "trainval"):
        ids = read_ids(sets / f"Segmentation/{name}.txt")
        assert ids == sorted(ids) and all(re.fullmatch(r"20(0[7-9]|1[0-2])_\d{6}", i) for i in ids)

    stems = {folder: {p.stem for p in (voc_cli / folder).iterdir()}
             for folder in ("JPEGImages", "Annotations", "SegmentationClass", "SegmentationClassAug")}
    assert stems["SegmentationClass"] == set(seg_train + val)
    assert stems["SegmentationClassAug"] == set(train_aug + val)
    xml_only = stems["JPEGImages"] - stems["SegmentationClassAug"]
    assert xml_only and stems["Annotations"] == stems["JPEGImages"]
    assert set(read_ids(sets / "Main/trainval.txt")) == stems["JPEGImages"]
    assert xml_only <= set(read_ids(sets / "Main/train.txt"))


def test_voc_masks_agree_with_xml_and_images(voc_cli):
    palette = voc_palette().flatten().tolist()
    official = set(read_ids(voc_cli / "ImageSets/Segmentation/trainval.txt"))
    train_classes = set()
    for xml in sorted((voc_cli / "Annotations").iterdir()):
        root = ET.parse(xml).getroot()
        w, h = int(root.findtext("size/width")), int(root.findtext("size/height"))
        with Image.open(voc_cli / "JPEGImages" / f"{xml.stem}.jpg") as img:
            assert img.size == (w, h) and img.mode == "RGB"
        assert {o.findtext("difficult") for o in root.iter("object")} == {"0"}
        for box in root.iter("bndbox"):
            x0, y0, x1, y1 = (int(box.findtext(t)) for t in ("xmin", "ymin", "xmax", "ymax"))
            assert 1 <= x0 <= x1 <= w and 1 <= y0 <= y1 <= h
        labels = xml_classes(xml)
        assert 1 <= len(root.findall("object")) <= 3
        for folder in ("SegmentationClass", "SegmentationClassAug"):
            path = voc_cli / folder / f"{xml.stem}.png"
            if not path.exists():
                continue
            with Image.open(path) as img:
                # as the real sets: VOC's own masks in its palette, SBD's converted ones in grayscale
                if folder == "SegmentationClass":
                    assert img.mode == "P" and img.getpalette()[:len(palette)] == palette
                else:
                    assert img.mode == "L"
                mask = np.asarray(img)
            assert mask.shape == (h, w)
            values = set(np.unique(mask).tolist())
            assert values <= set(range(21)) | {IGNORE_INDEX} and 0 in values
            assert values - {0, IGNORE_INDEX} == labels
            # VOC marks a void band along object boundaries; SBD-style masks (no official one) do not.
            assert (IGNORE_INDEX in values) == (xml.stem in official)
            if folder == "SegmentationClassAug" and xml.stem in official:
                assert np.array_equal(mask, np.asarray(Image.open(voc_cli / "SegmentationClass" / path.name)))
        if xml.stem in read_ids(voc_cli / "ImageSets/Main/train.txt"):
            train_classes |= labels
    assert train_classes == set(range(1, 21))


def test_coco_categories_are_the_official_80():
    ids = [cid for cid, _ in COCO_CATEGORIES]
    assert len(ids) == len(set(ids)) == 80 and ids == sorted(ids) and ids[-1] == 90
    assert set(range(1, 91)) - set(ids) == {12, 26, 29, 30, 45, 66, 68, 69, 71, 83}
    assert dict(COCO_CATEGORIES)[1] == "person" and dict(COCO_CATEGORIES)[67] == "dining table"


def test_coco_loads_in_pycocotools(coco):
    from pycocotools.coco import COCO

    for split in ("train", "val"):
        api = COCO(str(coco / "annotations" / f"instances_{split}2014.json"))
        assert [(c["id"], c["name"]) for c in api.loadCats(api.getCatIds())] == list(COCO_CATEGORIES)
        for img in api.loadImgs(api.getImgIds()):
            assert re.fullmatch(rf"COCO_{split}2014_\d{{12}}\.jpg", img["file_name"])
            assert img["file_name"].endswith(f"{img['id']:012d}.jpg")
            with Image.open(coco / f"{split}2014" / img["file_name"]) as im:
                assert im.size == (img["width"], img["height"])
        anns = api.loadAnns(api.getAnnIds())
        kinds = {"polygon" if isinstance(a["segmentation"], list) else "rle" for a in anns}
        assert kinds == {"polygon", "rle"} and any(a["iscrowd"] for a in anns)
        for a in anns:
            mask = api.annToMask(a)
            img = api.imgs[a["image_id"]]
            assert mask.shape == (img["height"], img["width"])
            # Polygons trace pixel centres, so they cover a little less than the pixels they outline.
            assert 0.7 * a["area"] <= mask.sum() <= a["area"]
            x, y, w, h = a["bbox"]
            ys, xs = np.nonzero(mask)
            assert x <= xs.min() and xs.max() < x + w and y <= ys.min() and ys.max() < y + h
            if a["iscrowd"]:
                assert isinstance(a["segmentation"]["counts"], list)


def test_rle_round_trip():
    from pycocotools import mask as mask_utils

    rng = np.random.default_rng(0)
    for first in (0, 1):
        mask = rng.random((7, 5)) < 0.5
        mask[0, 0] = first
        rle = mask_utils.frPyObjects(rle_uncompressed(mask), *mask.shape)
        assert np.array_equal(mask_utils.decode(rle), mask)
