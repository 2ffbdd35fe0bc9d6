"""The synthetic set's proxy style: its files, its determinism, and that its scenes hold the three
failure modes it is built for (parts, contexts, twins) with masks of whole objects only."""

import hashlib
import itertools
import json
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from wavecam.classes import IGNORE_INDEX, NUM_VOC_CLASSES, VOC_CLASSES
from wavecam.data import synthetic
from wavecam.data.synthetic import (
    CONTEXTS,
    PROXY_CLASSES,
    boundary_band,
    make_synthetic_coco,
    make_synthetic_voc,
    render_scene,
)

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")

N_SCENES = 60   # three per class


def tree_hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def scenes() -> list:
    """Scene i is led by class i % 20, at the sizes the proxy regime trains on."""
    out = []
    for i in range(N_SCENES):
        rng = np.random.default_rng([i, 2024])
        size = (96, 128)[i % 2]
        out.append(render_scene(rng, size, int(size * 0.8), i % NUM_VOC_CLASSES, with_crowd=i % 10 == 0,
                                style="proxy"))
    return out


@pytest.fixture(scope="module")
def voc(tmp_path_factory) -> Path:
    return make_synthetic_voc(tmp_path_factory.mktemp("voc_proxy"), n_train=6, n_val=2, size=64, seed=0,
                              style="proxy")


def test_proxy_voc_is_the_same_whatever_jobs_and_not_the_basic_set(voc, tmp_path):
    again = make_synthetic_voc(tmp_path / "jobs2", n_train=6, n_val=2, size=64, seed=0, style="proxy", jobs=2)
    assert tree_hashes(again) == tree_hashes(voc)
    basic = tree_hashes(make_synthetic_voc(tmp_path / "basic", n_train=6, n_val=2, size=64, seed=0))
    proxy = tree_hashes(voc)
    assert basic.keys() == proxy.keys()
    assert all(basic[k] != proxy[k] for k in basic if k.startswith(("JPEGImages", "Annotations")))


def test_proxy_coco_is_the_same_whatever_jobs(tmp_path):
    a = make_synthetic_coco(tmp_path / "a", n_train=4, n_val=2, size=64, seed=3, style="proxy")
    b = make_synthetic_coco(tmp_path / "b", n_train=4, n_val=2, size=64, seed=3, style="proxy", jobs=2)
    assert tree_hashes(a) == tree_hashes(b)
    from pycocotools.coco import COCO

    for split in ("train", "val"):
        path = a / "annotations" / f"instances_{split}2014.json"
        assert "proxy style" in json.loads(path.read_text())["info"]["description"]
        api = COCO(str(path))
        anns = api.loadAnns(api.getAnnIds())
        assert any(x["iscrowd"] for x in anns)   # the first image of each split has a crowd
        for x in anns:
            img = api.imgs[x["image_id"]]
            assert api.annToMask(x).shape == (img["height"], img["width"])


def test_proxy_voc_files_are_the_rendered_scenes(voc):
    """Each written mask is its scene's class map (band aside), so the context is 0 in it and the
    object is there whole; the XML names the style and the scene's classes."""
    ids = sorted(p.stem for p in (voc / "SegmentationClassAug").iterdir())
    all_ids = [synthetic.voc_image_id(i) for i in range(len(list((voc / "JPEGImages").iterdir())))]
    for index, image_id in enumerate(all_ids):
        rng = np.random.default_rng([0, synthetic._VOC_STREAM, index, *synthetic.STYLES["proxy"].seed_tail])
        scene = render_scene(rng, *synthetic._image_shape(rng, 64), first_class=synthetic._first_class(0, index),
                             style="proxy")
        root = ET.parse(voc / "Annotations" / f"{image_id}.xml").getroot()
        assert root.findtext("source/database") == "wavecam synthetic, proxy style"
        assert [o.findtext("name") for o in root.iter("object")] == [VOC_CLASSES[c] for c in scene.classes]
        if image_id not in ids:
            continue
        mask = np.asarray(Image.open(voc / "SegmentationClassAug" / f"{image_id}.png"))
        band = mask == IGNORE_INDEX
        assert not band.any() or np.array_equal(band, boundary_band(scene.instances))
        assert np.array_equal(mask[~band], scene.class_map()[~band])
        assert set(np.unique(mask[scene.context > 0]).tolist()) <= {0, IGNORE_INDEX}
        assert (mask[scene.parts] > 0).all()
    assert all_ids and ids


def test_parts_are_a_fifth_of_whole_objects_and_in_the_masks(scenes):
    shares = []
    for scene in scenes:
        labelled = scene.class_map() > 0
        assert not (scene.parts & ~labelled).any()
        for k, is_crowd in enumerate(scene.crowd, start=1):
            if is_crowd:
                continue
            visible = scene.mask(k)
            part = visible & scene.parts
            assert part.any() and (visible & ~scene.parts).any(), "an object is a body and a part"
            shares.append(part.sum() / visible.sum())
            # large enough that its part spans a few cells of a stride-16 CAM
            assert visible.sum() >= 0.05 * visible.size
    assert 0.15 <= np.median(shares) <= 0.3


def test_context_is_background_and_goes_with_its_class(scenes):
    kinds = list(CONTEXTS)
    with_class, without_class = [], []
    for scene in scenes:
        assert not (scene.context.astype(bool) & (scene.instances > 0)).any()
        for cls, info in enumerate(PROXY_CLASSES):
            if info.context is None:
                continue
            shown = bool((scene.context == 1 + kinds.index(info.context)).any())
            (with_class if cls in scene.classes else without_class).append(shown)
    assert len(with_class) >= 12 and np.mean(with_class) >= 0.5   # CONTEXT_RATE, less the chance of 60 draws
    assert np.mean(without_class) <= 0.1


def test_twins_share_a_body_differ_a_little_and_come_together(scenes):
    def head_gap(a, b):
        return max(np.abs(np.subtract(a.head[i], b.head[i])).max() for i in range(2))

    twins = {(i, c.twin) for i, c in enumerate(PROXY_CLASSES) if c.twin is not None}
    assert len(twins) == 10 and all((j, i) in twins for i, j in twins)
    twin_gaps, other_gaps = [], []
    for i, j in itertools.combinations(range(NUM_VOC_CLASSES), 2):
        a, b = PROXY_CLASSES[i], PROXY_CLASSES[j]
        if (i, j) in twins:
            assert a.body == b.body
            twin_gaps.append(head_gap(a, b))
        else:
            assert a.head != b.head
            other_gaps.append(head_gap(a, b))
    assert 0 < max(twin_gaps) < min(other_gaps)
    # a body is shared by several classes, so only the part tells them
    assert len({c.body for c in PROXY_CLASSES}) <= NUM_VOC_CLASSES // 4

    led = [scene for scene in scenes if PROXY_CLASSES[scene.classes[scene.crowd.index(False)]].twin is not None]
    together = [PROXY_CLASSES[s.classes[s.crowd.index(False)]].twin in s.classes for s in led]
    assert len(led) >= 20 and 0.3 <= np.mean(together) <= 0.7


def test_styles_are_checked_and_the_cli_takes_one(tmp_path, capsys):
    with pytest.raises(ValueError, match="unknown style"):
        make_synthetic_voc(tmp_path / "x", n_train=1, n_val=1, size=64, style="photo")
    with pytest.raises(ValueError, match="unknown style"):
        render_scene(np.random.default_rng(0), 64, 64, 0, style="photo")
    synthetic.main(["--out", str(tmp_path / "cli"), "--n-train", "2", "--n-val", "1", "--size", "48",
                    "--style", "proxy"])
    assert "proxy style" in capsys.readouterr().out
    xml = next((tmp_path / "cli" / "Annotations").iterdir())
    assert ET.parse(xml).getroot().findtext("source/database") == "wavecam synthetic, proxy style"
