import json
import shutil

import numpy as np
import pytest
from PIL import Image

from wavecam.classes import COCO_CATEGORIES, IGNORE_INDEX
from wavecam.data import coco as coco_module
from wavecam.data.coco import COCO2014, main
from wavecam.data.synthetic import rle_uncompressed
from wavecam.errors import BadFileError, WavecamError
from wavecam.io import load_png, save_png

# pycocotools' decoder trips NumPy 2's copy-keyword deprecation; that is its business, not ours.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")

H, W = 30, 40  # not square, so a height/width mix-up shows
PERSON, DOG, BOTTLE, TABLE, TOOTHBRUSH = 1, 18, 44, 67, 90  # official, non-contiguous category ids
INDEX = {cid: i for i, (cid, _) in enumerate(sorted(COCO_CATEGORIES))}


def coco_id(split, n):
    return f"COCO_{split}2014_{n:012d}"


def crowd_rle():
    mask = np.zeros((H, W), bool)
    mask[15:28, 20:38] = True
    return rle_uncompressed(mask)


# image number -> its annotations, in the order they are listed in the file (other images' in between).
ANNOTATIONS = {
    "train": [
        (9, DOG, [[2, 2, 25, 2, 25, 20, 2, 20]], 0),
        (39, TOOTHBRUSH, [[5, 5, 30, 5, 30, 12, 5, 12]], 0),
        (9, PERSON, crowd_rle(), 1),  # listed before the instance it covers: as 255, crowds still go on top
        (19, BOTTLE, crowd_rle(), 1),  # 19 has only a crowd: not an 'annotated' image
        (9, PERSON, [[15, 5, 35, 5, 25, 25]], 0),  # over the dog
        (39, DOG, [[1, 15, 10, 15, 10, 28, 1, 28], [30, 18, 38, 18, 38, 26]], 0),  # two parts
    ],
    "val": [(42, TABLE, [[3, 3, 36, 3, 36, 26, 3, 26]], 0)],
}
IMAGES = {"train": [9, 19, 29, 39], "val": [42, 52]}  # 29 and 52 have no annotation at all


def write_coco(root, categories=COCO_CATEGORIES):
    rng = np.random.default_rng(0)
    # The file's category list is shuffled: the class order must come from the ids, not the file.
    cats = [{"id": cid, "name": name} for cid, name in categories]
    cats = [cats[i] for i in rng.permutation(len(cats))]
    for split, numbers in IMAGES.items():
        (root / f"{split}2014").mkdir(parents=True)
        for n in numbers:
            Image.fromarray(rng.integers(0, 255, (H, W, 3), dtype=np.uint8)).save(
                root / f"{split}2014" / f"{coco_id(split, n)}.jpg")
        anns = [{"id": k + 1, "image_id": n, "category_id": cid, "segmentation": seg, "iscrowd": crowd,
                 "area": 1.0, "bbox": [0, 0, 1, 1]} for k, (n, cid, seg, crowd) in enumerate(ANNOTATIONS[split])]
        images = [{"id": n, "file_name": f"{coco_id(split, n)}.jpg", "height": H, "width": W} for n in numbers]
        (root / "annotations").mkdir(exist_ok=True)
        (root / "annotations" / f"instances_{split}2014.json").write_text(
            json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return root


def expected_mask(root, split, n, crowd="background"):
    """Painted independently with pycocotools: the non-crowd instances in file order, as ReCAM's
    annToMask.py selects them (getAnnIds(iscrowd=False)); with `ignore`, then crowds as 255."""
    from pycocotools.coco import COCO

    api = COCO(str(root / "annotations" / f"instances_{split}2014.json"))
    mask = np.zeros((H, W), np.uint8)
    for a in api.loadAnns(api.getAnnIds(imgIds=[n], iscrowd=False)):
        mask[api.annToMask(a) == 1] = INDEX[a["category_id"]] + 1
    if crowd == "ignore":
        for a in api.loadAnns(api.getAnnIds(imgIds=[n], iscrowd=True)):
            mask[api.annToMask(a) == 1] = IGNORE_INDEX
    return mask


@pytest.fixture
def root(tmp_path):
    return write_coco(tmp_path / "coco")


def test_category_mapping_follows_the_official_ids():
    assert COCO2014.num_classes == 80 and len(COCO2014.class_names) == 80
    assert coco_module.CATEGORY_IDS == tuple(sorted(cid for cid, _ in COCO_CATEGORIES))
    assert COCO2014.class_names[INDEX[DOG]] == "dog" and INDEX[TOOTHBRUSH] == 79 and INDEX[TABLE] == 60


def test_splits_and_labels(root):
    ds = COCO2014(root, cache_dir=root.parent / "cache", jobs=1)
    assert ds.layout == "official"
    # ReCAM's splits (torchvision's CocoDetection): every image of the file, sorted by id.
    assert ds.split("train") == ds.split("train_all") == [coco_id("train", n) for n in IMAGES["train"]]
    assert ds.split("val") == ds.split("val_all") == [coco_id("val", 42), coco_id("val", 52)]
    strict = COCO2014(root, cache_dir=root.parent / "cache", jobs=1, split_images="annotated")
    assert strict.split("train") == [coco_id("train", 9), coco_id("train", 39)]
    assert strict.split("val") == [coco_id("val", 42)]
    assert strict.split("train_all") == ds.split("train_all")
    ids = ds.split("train_all") + ds.split("val_all")
    labels = ds.labels(ids)
    assert labels.shape == (6, 80) and labels.dtype == np.float32
    present = [set(np.flatnonzero(row).tolist()) for row in labels]
    assert present == [{INDEX[DOG], INDEX[PERSON]}, {INDEX[BOTTLE]}, set(), {INDEX[TOOTHBRUSH], INDEX[DOG]},
                       {INDEX[TABLE]}, set()]
    list_file = root.parent / "list.txt"
    list_file.write_text(f"{ids[3]}\n{ids[4]}\n")
    assert ds.split(list_file) == [ids[3], ids[4]]
    assert ds.load_image(ids[0]).shape == (H, W, 3)


@pytest.mark.parametrize("crowd", ["background", "ignore"])
def test_masks_match_annToMask_pixel_for_pixel(root, crowd):
    ds = COCO2014(root, cache_dir=root.parent / "cache", jobs=2, crowd=crowd)
    ids = ds.split("train_all") + ds.split("val_all")
    assert ds.prepare_masks(ids) == len(ids)
    for image_id in ids:
        split, n = image_id.split("_")[1].removesuffix("2014"), int(image_id.split("_")[2])
        path = ds.mask_path(image_id)
        assert path.is_relative_to(root.parent / "cache" / f"coco_masks_crowd_{crowd}") and path.is_file()
        np.testing.assert_array_equal(load_png(path), expected_mask(root, split, n, crowd), err_msg=image_id)
    gt = ds.load_gt(coco_id("train", 9))
    assert gt[10, 10] == INDEX[DOG] + 1  # the dog alone
    assert gt[8, 22] == INDEX[PERSON] + 1  # the person drawn over the dog
    if crowd == "ignore":
        assert gt[20, 25] == IGNORE_INDEX  # the crowd over the person, though listed before it
        assert gt[26, 36] == IGNORE_INDEX
    else:
        assert gt[20, 25] == INDEX[PERSON] + 1  # the person under the crowd, which is not painted
        assert gt[26, 36] == 0  # the crowd alone: background
        assert not ds.load_gt(coco_id("train", 19)).any()  # a crowd-only image is all background
    assert not ds.load_gt(coco_id("val", 52)).any()


def test_switching_policies_never_reads_another_policys_cache(root):
    cache = root.parent / "cache"
    image_id = coco_id("train", 9)
    background = COCO2014(root, cache_dir=cache, jobs=1).load_gt(image_id)
    ignore = COCO2014(root, cache_dir=cache, jobs=1, crowd="ignore").load_gt(image_id)
    np.testing.assert_array_equal(background, expected_mask(root, "train", 9, "background"))
    np.testing.assert_array_equal(ignore, expected_mask(root, "train", 9, "ignore"))
    # Both read the one cached index, which holds every image: each policy still gets its own list.
    assert len(COCO2014(root, cache_dir=cache, jobs=1, split_images="annotated").split("train")) == 2
    assert len(COCO2014(root, cache_dir=cache, jobs=1).split("train")) == 4
    assert len(COCO2014(root, cache_dir=cache, jobs=1, split_images="annotated").split("train")) == 2
    with pytest.raises(WavecamError, match="crowd policy 'skip'.*background, ignore"):
        COCO2014(root, crowd="skip")
    with pytest.raises(WavecamError, match="split images 'some'.*all, annotated"):
        COCO2014(root, split_images="some")


def test_second_run_does_no_work(root, monkeypatch):
    cache = root.parent / "cache"
    ds = COCO2014(root, cache_dir=cache, jobs=1)
    ids = ds.split("train")
    labels = ds.labels(ids)
    ds.prepare_masks(ids)
    stamps = {p: p.stat().st_mtime_ns for p in ds.rendered_mask_dir.rglob("*.png")}
    assert len(stamps) == len(ids)

    def no_json(path):
        raise AssertionError(f"parsed {path} again")

    monkeypatch.setattr(COCO2014, "_load_api", staticmethod(no_json))
    again = COCO2014(root, cache_dir=cache, jobs=1)
    assert again.split("train") == ids
    np.testing.assert_array_equal(again.labels(ids), labels)
    assert again.prepare_masks(ids) == 0
    assert {p: p.stat().st_mtime_ns for p in ds.rendered_mask_dir.rglob("*.png")} == stamps
    again.load_gt(ids[0])


def test_an_edited_annotation_file_is_indexed_and_rendered_again(root):
    cache = root.parent / "cache"
    ids = COCO2014(root, cache_dir=cache, jobs=1).split("train_all")
    dog_image = coco_id("train", 39)
    first = COCO2014(root, cache_dir=cache, jobs=1)
    assert first.labels([dog_image])[0, INDEX[DOG]] == 1
    first.prepare_masks(ids)
    path = root / "annotations" / "instances_train2014.json"
    data = json.loads(path.read_text())
    data["annotations"] = [a for a in data["annotations"] if not (a["image_id"] == 39 and a["category_id"] == DOG)]
    path.write_text(json.dumps(data))
    again = COCO2014(root, cache_dir=cache, jobs=1)
    assert again.labels([dog_image])[0, INDEX[DOG]] == 0
    assert again.prepare_masks(ids) == len(ids), "masks of the old file are not read"
    np.testing.assert_array_equal(again.load_gt(dog_image), expected_mask(root, "train", 39))


def test_load_gt_renders_one_missing_mask(root):
    ds = COCO2014(root, jobs=1)  # cache from WAVECAM_CACHE
    image_id = coco_id("train", 39)
    np.testing.assert_array_equal(ds.load_gt(image_id), expected_mask(root, "train", 39))
    assert [p.name for p in ds.cache_dir.rglob("*.png")] == [f"{image_id}.png"]


def test_voc_style_layout(root, tmp_path):
    official = COCO2014(root, cache_dir=tmp_path / "cache", jobs=1)
    voc = tmp_path / "voc_style"
    for split in ("train", "val"):
        for image_id in official.split(f"{split}_all"):
            (voc / "JPEGImages" / split).mkdir(parents=True, exist_ok=True)
            shutil.copy(official.image_path(image_id), voc / "JPEGImages" / split / f"{image_id}.jpg")
            save_png(voc / "SegmentationClass" / split / f"{image_id}.png", official.load_gt(image_id))
    ds = COCO2014(voc, cache_dir=tmp_path / "voc_cache", jobs=2)
    assert ds.layout == "voc"
    strict = COCO2014(voc, cache_dir=tmp_path / "voc_cache", jobs=2, split_images="annotated")
    official_strict = COCO2014(root, cache_dir=tmp_path / "cache", jobs=1, split_images="annotated")
    for split in ("train", "val", "train_all", "val_all"):
        assert ds.split(split) == official.split(split), split
        assert strict.split(split) == official_strict.split(split), split
    ids = ds.split("train_all")
    expected = official.labels(ids)
    expected[1, INDEX[BOTTLE]] = 0  # a crowd-only class leaves no class pixel in the mask
    np.testing.assert_array_equal(ds.labels(ids), expected)
    np.testing.assert_array_equal(ds.load_gt(ids[0]), official.load_gt(ids[0]))
    assert ds.load_image(ids[0]).shape == (H, W, 3)
    assert ds.prepare_masks(ids) == 0
    (voc / "SegmentationClass" / "val" / f"{coco_id('val', 52)}.png").unlink()
    with pytest.raises(WavecamError, match=r"SegmentationClass/val/COCO_val2014_000000000052\.png"):
        COCO2014(voc, cache_dir=tmp_path / "voc_cache2").labels([coco_id("val", 52)])


def test_clear_errors(root, tmp_path):
    with pytest.raises(WavecamError, match="folder not found.*train2014"):
        COCO2014(tmp_path / "nonexistent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(WavecamError, match="neither annotations/.*Expected the official COCO 2014 layout"):
        COCO2014(tmp_path / "empty")

    (root / "annotations" / "instances_val2014.json").unlink()
    ds = COCO2014(root, jobs=1)
    with pytest.raises(WavecamError, match=r"annotation file not found: .*annotations/instances_val2014\.json"):
        ds.split("val")
    with pytest.raises(WavecamError, match="annotation file not found.*instances_val2014"):
        ds.load_gt(coco_id("val", 42))

    missing = coco_id("train", 99)
    with pytest.raises(WavecamError, match=rf"{missing}.*train2014/{missing}\.jpg.*Expected"):
        ds.load_image(missing)
    with pytest.raises(WavecamError, match=missing):
        ds.check_ids([missing])
    with pytest.raises(WavecamError, match=f"{missing}.*not in .*instances_train2014.json"):
        ds.labels([missing])
    with pytest.raises(WavecamError, match="not a COCO 2014 id"):
        ds.labels(["2007_000032"])
    with pytest.raises(WavecamError, match="id list not found.*train_all"):
        ds.split("no_such_list.txt")


def test_unknown_category_id_is_a_bad_file(tmp_path):
    root = write_coco(tmp_path / "coco", categories=[(12, "street sign")] + list(COCO_CATEGORIES))
    data = json.loads((root / "annotations" / "instances_val2014.json").read_text())
    data["annotations"][0]["category_id"] = 12
    (root / "annotations" / "instances_val2014.json").write_text(json.dumps(data))
    with pytest.raises(BadFileError, match=r"instances_val2014\.json.*\[12\]"):
        COCO2014(root).split("val")


def test_cli_prepares_both_splits(root, capsys):
    cache = root.parent / "cache"
    assert main(["--mscoco_root", str(root), "--cache_dir", str(cache), "--jobs", "1"]) == 0
    out = capsys.readouterr().out
    assert "train       4 images of      4" in out and "4 rendered now" in out and "2 rendered now" in out
    assert "coco_masks_crowd_background" in out
    assert len(list((cache / "coco_masks_crowd_background").rglob("*.png"))) == 6
    assert main(["--mscoco_root", str(root), "--cache_dir", str(cache), "--jobs", "1",
                 "--coco_split_images", "annotated", "--coco_crowd", "ignore"]) == 0
    out = capsys.readouterr().out
    assert "train       2 images of      4" in out and "1 rendered now" in out
    assert len(list((cache / "coco_masks_crowd_ignore").rglob("*.png"))) == 3
    assert main(["--mscoco_root", str(root.parent / "missing")]) == 2
    assert "folder not found" in capsys.readouterr().err
