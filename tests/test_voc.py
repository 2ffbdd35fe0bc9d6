import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET

import numpy as np
import pytest
import torch

from wavecam.classes import IGNORE_INDEX, VOC_CLASSES
from wavecam.data.datasets import ClassificationDataset, InferenceDataset
from wavecam.data.voc import VOC12, read_id_list
from wavecam.errors import BadFileError, WavecamError
from wavecam.io import load_png


def mask_classes(root, image_id):
    for folder in ("SegmentationClass", "SegmentationClassAug"):
        p = root / folder / f"{image_id}.png"
        if p.is_file():
            v = np.unique(load_png(p))
            return set((v[(v > 0) & (v != IGNORE_INDEX)] - 1).tolist())
    return None


def test_derived_lists_follow_the_masks(voc_root):
    ds = VOC12(voc_root)
    val = ds.split("val")
    train_aug = ds.split("train_aug")
    aug_ids = {p.stem for p in (voc_root / "SegmentationClassAug").glob("*.png")}
    assert set(train_aug) == aug_ids - set(val)
    assert train_aug == sorted(train_aug) and not set(train_aug) & set(val)
    assert set(ds.split("train")) <= set(train_aug)
    assert ds.split("trainval") == read_id_list(voc_root / "ImageSets/Segmentation/trainval.txt")


def xml_classes(root, image_id):
    names = [o.findtext("name") for o in ET.parse(root / "Annotations" / f"{image_id}.xml").iter("object")]
    return {VOC_CLASSES.index(n) for n in names}


def test_labels_come_from_the_xml_as_the_reference_s(voc_root):
    ds = VOC12(voc_root)
    ids = sorted(p.stem for p in (voc_root / "JPEGImages").glob("*.jpg"))
    labels = ds.labels(ids)
    assert labels.shape == (len(ids), 20) and labels.dtype == np.float32
    for image_id, lab in zip(ids, labels):
        assert set(np.flatnonzero(lab).tolist()) == xml_classes(voc_root, image_id), image_id


def test_labels_from_masks_on_request(voc_root):
    ds = VOC12(voc_root, label_source="mask")
    ids = sorted(p.stem for p in (voc_root / "JPEGImages").glob("*.jpg"))
    labels = ds.labels(ids)
    from_xml = 0
    for image_id, lab in zip(ids, labels):
        present = set(np.flatnonzero(lab).tolist())
        expected = mask_classes(voc_root, image_id)
        if expected is None:  # an image without any mask: labels come from its XML
            from_xml += 1
            expected = xml_classes(voc_root, image_id)
        assert present == expected, image_id
        assert present, f"{image_id} has no class"
    assert from_xml > 0, "the synthetic set should exercise labels from XML"
    with pytest.raises(WavecamError, match="label source"):
        VOC12(voc_root, label_source="png")


def test_xml_and_mask_labels_differ_where_an_object_has_no_pixels(voc_root, tmp_path):
    """An annotated object that the mask does not show (too small, occluded) is in the XML label only."""
    root = tmp_path / "voc"
    shutil.copytree(voc_root, root)
    image_id = VOC12(root).split("train")[0]
    xml = root / "Annotations" / f"{image_id}.xml"
    absent = next(c for c in range(20) if c not in xml_classes(root, image_id))
    tree = ET.parse(xml)
    obj = ET.SubElement(tree.getroot(), "object")
    ET.SubElement(obj, "name").text = VOC_CLASSES[absent]
    ET.SubElement(obj, "difficult").text = "1"
    tree.write(xml)
    from_xml = VOC12(root, cache_dir=tmp_path / "c").labels([image_id])[0]
    from_mask = VOC12(root, cache_dir=tmp_path / "c", label_source="mask").labels([image_id])[0]
    assert from_xml[absent] == 1 and from_mask[absent] == 0
    assert set(np.flatnonzero(from_mask).tolist()) == mask_classes(root, image_id)
    # each source has its own cache, so switching never reads the other's labels
    assert VOC12(root, cache_dir=tmp_path / "c", label_source="mask").labels([image_id])[0][absent] == 0

    xml.unlink()
    with pytest.raises(WavecamError, match="--voc12_label_source mask"):
        VOC12(root, cache_dir=tmp_path / "d").labels([image_id])


def test_labels_are_cached(voc_root, tmp_path):
    ids = VOC12(voc_root).split("train_aug")
    first = VOC12(voc_root, cache_dir=tmp_path / "c").labels(ids)
    assert (tmp_path / "c" / "voc12_labels_xml.npz").is_file()
    again = VOC12(voc_root, cache_dir=tmp_path / "c")
    again._label_of = None  # a second run must not look at a single file
    np.testing.assert_array_equal(again.labels(ids), first)


def test_missing_root_and_layout_errors(tmp_path):
    with pytest.raises(WavecamError, match="folder not found.*JPEGImages"):
        VOC12(tmp_path / "nonexistent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(WavecamError, match="no JPEGImages"):
        VOC12(tmp_path / "empty")


def test_unknown_id_names_id_and_path(voc_root):
    ds = VOC12(voc_root)
    with pytest.raises(WavecamError, match=r"2099_000001.*JPEGImages/2099_000001\.jpg"):
        ds.load_image("2099_000001")
    with pytest.raises(WavecamError, match="2099_000001"):
        ds.check_ids(["2099_000001"])


def test_corrupt_image_is_named(voc_root, tmp_path):
    import shutil

    root = tmp_path / "voc"
    shutil.copytree(voc_root, root)
    image_id = VOC12(root).split("val")[0]
    p = root / "JPEGImages" / f"{image_id}.jpg"
    p.write_bytes(p.read_bytes()[:200])
    with pytest.raises(BadFileError, match=str(p)):
        VOC12(root).load_image(image_id)


def test_user_list_file_with_deeplab_lines(voc_root, tmp_path):
    ids = VOC12(voc_root).split("val")[:3]
    f = tmp_path / "list.txt"
    f.write_text("".join(f"/JPEGImages/{i}.jpg /SegmentationClassAug/{i}.png\n" for i in ids))
    assert VOC12(voc_root).split(str(f)) == ids


@pytest.mark.slow
def test_cli_summary_and_bad_root(voc_root):
    ok = subprocess.run([sys.executable, "-m", "wavecam.data.voc", "--voc12_root", str(voc_root)],
                        capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert "train_aug" in ok.stdout
    bad = subprocess.run([sys.executable, "-m", "wavecam.data.voc", "--voc12_root", "/nonexistent"],
                         capture_output=True, text=True)
    assert bad.returncode != 0
    assert bad.stderr.strip().count("\n") == 0 and "JPEGImages" in bad.stderr and "Traceback" not in bad.stderr


def test_classification_dataset_shapes_and_determinism(voc_root):
    src = VOC12(voc_root)
    ds = ClassificationDataset(src, src.split("train_aug")[:4], crop_size=48, resize_long=(40, 80))
    torch.manual_seed(0)
    a = ds[1]
    torch.manual_seed(0)
    b = ds[1]
    assert a["img"].shape == (3, 48, 48) and a["img"].dtype == torch.float32
    assert torch.equal(a["img"], b["img"]) and a["label"].shape == (20,)
    inf = InferenceDataset(src, src.split("val")[:2])[0]
    assert inf["img"].shape[0] == 3 and tuple(inf["img"].shape[1:]) == tuple(inf["size"])
