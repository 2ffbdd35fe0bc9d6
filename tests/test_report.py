import csv
import json
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pytest
from PIL import Image

from wavecam.classes import IGNORE_INDEX, VOC_CLASSES
from wavecam.data.synthetic import make_synthetic_voc
from wavecam.data.voc import VOC12
from wavecam.errors import WavecamError
from wavecam.io import save_cam, save_json, save_png
from wavecam.metrics import unsure_as_background
from wavecam.report import fg_precision_recall, pick, report
from wavecam.report.gallery import sem_seg_label

ROOT = Path(__file__).resolve().parents[1]
N_CLASS = len(VOC_CLASSES) + 1


@pytest.fixture(scope="module")
def voc(tmp_path_factory):
    return make_synthetic_voc(tmp_path_factory.mktemp("voc"), n_train=8, n_val=4, size=48, seed=0)


def fake_result(rng, voc_root, ws: Path) -> dict:
    """The numbers an eval pass writes; absent classes are null as in the real files."""
    iou, precision, recall = (rng.uniform(0.05, 0.95, N_CLASS).tolist() for _ in range(3))
    for k in (3, 7, 12):
        iou[k] = precision[k] = recall[k] = None
    precision[5] = None  # a class in the ground truth that was never predicted
    return {"miou": float(np.mean([v for v in iou if v is not None])), "iou": iou, "precision": precision,
            "recall": recall, "pixel_accuracy": 0.8, "n_images": 4, "dataset": "voc",
            "data_root": str(voc_root), "eval_set": "val", "work_space": str(ws), "cache_dir": None}


def make_work_space(ws: Path, voc_root: Path, seed: int, irn: bool) -> None:
    """cam_mask/ (and sem_seg/) for the val images, with results JSON written by hand."""
    rng = np.random.default_rng(seed)
    source = VOC12(voc_root)
    for image_id in source.split("val"):
        gt = source.load_gt(image_id)
        keys = np.array(sorted(set(np.unique(gt).tolist()) - {0, IGNORE_INDEX})) - 1
        high_res = np.stack([(gt == k + 1) * 0.8 + rng.uniform(0, 0.3, gt.shape) for k in keys]).astype(np.float32)
        high_res /= high_res.max(axis=(1, 2), keepdims=True)
        save_cam(ws / "cam_mask" / f"{image_id}.npz", keys, high_res[:, ::4, ::4], high_res)
        if irn:
            label = np.where(rng.uniform(size=gt.shape) < 0.1, 0, gt).astype(np.uint8)
            save_png(ws / "sem_seg" / f"{image_id}.png", label)
    cam = fake_result(rng, voc_root, ws)
    sweep = [{"threshold": t, "miou": float(rng.uniform(0.2, 0.6))} for t in (0.1, 0.15, 0.2, 0.25)]
    best = max(sweep, key=lambda s: s["miou"])
    cam |= {"threshold": 0.15, "best_threshold": best["threshold"], "best_miou": best["miou"], "sweep": sweep,
            "cam_out_dir": str(ws / "cam_mask")}
    save_json(ws / "results" / "eval_cam.json", cam)
    if irn:
        sem = fake_result(rng, voc_root, ws) | {"sem_seg_bg_thres": 0.25, "beta": 10, "exp_times": 8,
                                                "sem_seg_out_dir": str(ws / "sem_seg")}
        save_json(ws / "results" / "eval_sem_seg.json", sem)


@pytest.fixture(scope="module")
def work_spaces(voc, tmp_path_factory):
    base = tmp_path_factory.mktemp("ws")
    make_work_space(base / "ws_cam", voc, seed=1, irn=False)
    make_work_space(base / "ws_wavecam", voc, seed=2, irn=True)
    return base / "ws_cam", base / "ws_wavecam"


def load(ws: Path, name: str) -> dict:
    return json.loads((ws / "results" / f"{name}.json").read_text())


def pct(v) -> str:
    return "-" if v is None else f"{100 * v:.1f}"


def md_rows(text: str, first_header: str) -> list[list[str]]:
    """The body of the markdown table whose header starts with `first_header`."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_header} |"))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip("|").split("|")])
    return rows


class Sources(HTMLParser):
    def __init__(self):
        super().__init__()
        self.srcs = []

    def handle_starttag(self, tag, attrs):
        self.srcs += [v for k, v in attrs if k == "src"]


def test_report_numbers_plot_and_gallery(work_spaces, tmp_path):
    ws_cam, ws_wave = work_spaces
    out = tmp_path / "report"
    report([ws_cam, ws_wave], out, gallery=3, names=["CAM", "WaveCAM"])
    cam_a, cam_b, sem_b = load(ws_cam, "eval_cam"), load(ws_wave, "eval_cam"), load(ws_wave, "eval_sem_seg")

    with open(out / "results.csv") as f:
        rows = {r["run"]: r for r in csv.DictReader(f)}
    for run, cam in (("CAM", cam_a), ("WaveCAM", cam_b)):
        for col, key in (("seeds_miou", "miou"), ("seeds_threshold", "threshold"), ("best_miou", "best_miou"),
                         ("best_threshold", "best_threshold"), ("seeds_n_images", "n_images")):
            assert float(rows[run][col]) == cam[key]
    assert float(rows["WaveCAM"]["irn_miou"]) == sem_b["miou"]
    assert float(rows["WaveCAM"]["irn_bg_threshold"]) == sem_b["sem_seg_bg_thres"]
    assert rows["CAM"]["irn_miou"] == ""
    present = [k for k in range(1, N_CLASS) if sem_b["recall"][k] is not None]
    assert float(rows["WaveCAM"]["irn_fg_recall"]) == pytest.approx(np.mean([sem_b["recall"][k] for k in present]))
    assert float(rows["WaveCAM"]["irn_fg_precision"]) == pytest.approx(
        np.mean([sem_b["precision"][k] or 0.0 for k in present]))

    md = (out / "results.md").read_text()
    main = {r[0]: r for r in md_rows(md, "run")}
    assert main["CAM"][1:5] == [pct(cam_a["miou"]), "0.15", pct(cam_a["best_miou"]), f"{cam_a['best_threshold']:.2f}"]
    assert main["CAM"][5] == "-"
    assert main["WaveCAM"][5:7] == [pct(sem_b["miou"]), "0.25"]
    assert main["WaveCAM"][-1] == "4"
    per_class = md_rows(md, "class")
    assert [r[0] for r in per_class[:-1]] == ["background", *VOC_CLASSES]
    assert [r[1:] for r in per_class[:-1]] == [[pct(a), pct(b), pct(s)]
                                               for a, b, s in zip(cam_a["iou"], cam_b["iou"], sem_b["iou"])]
    assert per_class[-1][1:] == [pct(cam_a["miou"]), pct(cam_b["miou"]), pct(sem_b["miou"])]
    with open(out / "per_class_iou.csv") as f:
        long = [(r["run"], r["stage"], r["class"], r["iou"]) for r in csv.DictReader(f)]
    assert ("WaveCAM", "irn", "aeroplane", str(sem_b["iou"][1])) in long and len(long) == 3 * N_CLASS

    with Image.open(out / "miou_vs_threshold.png") as img:
        assert img.format == "PNG"

    parser = Sources()
    parser.feed((out / "gallery.html").read_text())
    assert parser.srcs and all((out / unquote(s)).is_file() for s in parser.srcs)
    assert sum("_image.jpg" in s for s in parser.srcs) == 6  # 3 images for each of the two runs
    assert any("_irn.png" in s for s in parser.srcs)


def test_three_baseline_rows_and_the_final_segmentation_column(voc, tmp_path):
    """CAM, ReCAM and WaveCAM work spaces in one table; the seg column appears with results/eval_seg.json."""
    names = ["CAM", "ReCAM", "WaveCAM"]
    spaces = [tmp_path / f"ws_{n.lower()}" for n in names]
    for seed, ws in enumerate(spaces):
        make_work_space(ws, voc, seed=10 + seed, irn=True)
    report(spaces, tmp_path / "r", names=names)
    md = (tmp_path / "r" / "results.md").read_text()
    header = next(line for line in md.splitlines() if line.startswith("| run |"))
    assert "seg mIoU" not in header
    rows = md_rows(md, "run")
    assert [r[0] for r in rows] == names
    for ws, row in zip(spaces, rows):
        assert row[1] == pct(load(ws, "eval_cam")["miou"]) and row[5] == pct(load(ws, "eval_sem_seg")["miou"])

    rng = np.random.default_rng(3)
    seg = fake_result(rng, voc, spaces[2]) | {"n_images": 5}
    save_json(spaces[2] / "results" / "eval_seg.json", seg)
    report(spaces, tmp_path / "r", names=names)
    md = (tmp_path / "r" / "results.md").read_text()
    header = next(line for line in md.splitlines() if line.startswith("| run |"))
    columns = [c.strip() for c in header.strip("|").split("|")]
    rows = {r[0]: dict(zip(columns, r)) for r in md_rows(md, "run")}
    assert rows["WaveCAM"]["seg mIoU"] == pct(seg["miou"]) and rows["CAM"]["seg mIoU"] == "-"
    assert rows["WaveCAM"]["images"] == "4 / 5"
    appendix_header = next(line for line in md.splitlines() if line.startswith("| class |"))
    assert "| WaveCAM seg |" in appendix_header and "CAM seg" not in appendix_header.replace("WaveCAM seg", "")
    with open(tmp_path / "r" / "results.csv") as f:
        csv_rows = {r["run"]: r for r in csv.DictReader(f)}
    assert float(csv_rows["WaveCAM"]["seg_miou"]) == seg["miou"] and csv_rows["ReCAM"]["seg_miou"] == ""


@pytest.mark.slow
def test_cli_and_empty_work_space(work_spaces, tmp_path):
    ws_cam, _ = work_spaces
    cmd = [sys.executable, "-m", "wavecam.report"]
    ok = subprocess.run([*cmd, str(ws_cam), "--out", str(tmp_path / "r")], capture_output=True, text=True, cwd=ROOT)
    assert ok.returncode == 0, ok.stderr
    assert (tmp_path / "r" / "results.csv").is_file() and not (tmp_path / "r" / "gallery.html").exists()

    empty = tmp_path / "empty_ws"
    empty.mkdir()
    with pytest.raises(WavecamError, match="no results/eval_cam.json"):
        report([empty], tmp_path / "r2")
    bad = subprocess.run([*cmd, str(empty), "--out", str(tmp_path / "r2")], capture_output=True, text=True, cwd=ROOT)
    assert bad.returncode == 2 and "no results/eval_cam.json" in bad.stderr and "Traceback" not in bad.stderr


def test_pick_best_median_worst():
    order = list(range(10))
    assert pick(order, 6) == [(0, "best"), (1, "best"), (4, "median"), (5, "median"), (8, "worst"), (9, "worst")]
    assert pick(order, 2) == [(0, "best"), (9, "worst")]
    assert [i for i, _ in pick(order[:3], 10)] == [0, 1, 2]


def test_fg_precision_recall_ignores_absent_classes():
    result = {"precision": [0.9, 0.5, None, None], "recall": [0.8, 0.7, 0.3, None]}
    assert fg_precision_recall(result) == pytest.approx((0.25, 0.5))


def test_gallery_scores_pseudo_labels_as_eval_sem_seg_does(tmp_path):
    label = np.array([[0, 3, IGNORE_INDEX], [IGNORE_INDEX, 5, 0]], dtype=np.uint8)
    scored = unsure_as_background(label)
    assert scored.dtype == np.uint8 and scored.tolist() == [[0, 3, 0], [0, 5, 0]]
    assert (label == IGNORE_INDEX).sum() == 2  # a copy: the caller's label keeps its unsure pixels
    save_png(tmp_path / "label.png", label)
    assert np.array_equal(sem_seg_label(tmp_path / "label.png"), scored)
