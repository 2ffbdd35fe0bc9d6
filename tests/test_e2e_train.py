"""End-to-end trainer: the launch script on 1 and 2 CPU processes, exact resume, the batch schedule."""

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from wavecam import dist
from wavecam.io import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
LAUNCHER = ROOT / "end_to_end" / "train" / "run_wavecam_voc.sh"
CONFIG = ROOT / "end_to_end" / "configs" / "synthetic.yaml"
# Four iterations that pass every switch of the schedule: seg/aff losses and the wave loss from 1,
# propagated seg targets and WaveCAM pseudo labels from 2; validation and a checkpoint every 2.
TINY = ["train.max_iters=4", "train.eval_iters=2", "train.log_iters=2", "train.cam_iters=1",
        "train.prop_label_iters=2", "wavecam.start_iter=1", "wavecam.cams_iter=2"]
N_VAL = 3


@pytest.fixture(scope="module")
def voc96(tmp_path_factory):
    """Images of 96 pixels: the smallest whose half-scale CAMs still fit MiT's first-stage reduction."""
    from wavecam.data.synthetic import make_synthetic_voc

    return make_synthetic_voc(tmp_path_factory.mktemp("voc96"), n_train=8, n_val=N_VAL, size=96, seed=0)


def launch(cwd: Path, nproc: int, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "NPROC": str(nproc), "CONFIG": str(CONFIG), "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(["bash", str(LAUNCHER), *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def check_run(work_dir: Path, test_name: str) -> dict:
    assert sorted(p.name for p in (work_dir / "checkpoints").iterdir()) == ["iter_0000002.pth", "iter_0000004.pth"]
    for kind in ("cam", "aff", "seg"):
        val = json.loads((work_dir / "results" / f"val_{kind}.json").read_text())
        assert val["n_images"] == N_VAL and val["iteration"] == 4 and len(val["iou"]) == 21
        assert [h["iteration"] for h in val["history"]] == [2, 4]
    test = json.loads((work_dir / "results" / f"test_{test_name}.json").read_text())
    assert test["n_images"] == N_VAL and 0 <= test["miou"] <= 1 and test["eval_set"] == "val"
    assert len(list((work_dir / "test" / test_name).glob("*.png"))) == N_VAL
    assert "iter 4/4" in (work_dir / "train.log").read_text()
    return test


def test_one_process_runs_to_the_end_and_resumes_exactly(voc96, tmp_path):
    launch(tmp_path, 1, "--work_dir", "full", "--set", f"dataset.root={voc96}", *TINY, "test.crf=true")
    test = check_run(tmp_path / "full", "val_crf")
    assert test["crf"] is True and test["iteration"] == 4

    # A run stopped after its iteration-2 checkpoint, resumed.
    (tmp_path / "stopped" / "checkpoints").mkdir(parents=True)
    shutil.copy(tmp_path / "full" / "checkpoints" / "iter_0000002.pth", tmp_path / "stopped" / "checkpoints")
    launch(tmp_path, 1, "--work_dir", "stopped", "--resume", "auto", "--set", f"dataset.root={voc96}", *TINY,
           "test.after_training=false")
    assert "resumed from" in (tmp_path / "stopped" / "train.log").read_text()

    full = load_checkpoint(tmp_path / "full" / "checkpoints" / "iter_0000004.pth")
    resumed = load_checkpoint(tmp_path / "stopped" / "checkpoints" / "iter_0000004.pth")
    assert full["model"].keys() == resumed["model"].keys()
    for k, v in full["model"].items():
        assert torch.equal(v, resumed["model"][k]), k
    for i, state in full["optimizer"]["state"].items():
        assert torch.equal(state["exp_avg_sq"], resumed["optimizer"]["state"][i]["exp_avg_sq"])
    assert full["scheduler"] == resumed["scheduler"]
    assert torch.equal(full["rng"][0]["torch"], resumed["rng"][0]["torch"])


def test_two_processes_with_gloo(voc96, tmp_path):
    launch(tmp_path, 2, "--work_dir", "ddp", "--set", f"dataset.root={voc96}", *TINY, "test.crf=false")
    assert check_run(tmp_path / "ddp", "val")["crf"] is False
    assert len(load_checkpoint(tmp_path / "ddp" / "checkpoints" / "iter_0000004.pth")["rng"]) == 2


def test_missing_dataset_root_is_one_readable_error(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "end_to_end" / "train.py"), "--config", str(CONFIG),
                           "--set", f"dataset.root={tmp_path / 'nowhere'}"], cwd=tmp_path, capture_output=True,
                          text=True)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: dataset.root") and "Traceback" not in proc.stderr


def e2e_utils():
    """end_to_end/utils.py, under a name that cannot clash with another `utils`."""
    spec = importlib.util.spec_from_file_location("e2e_utils", ROOT / "end_to_end" / "utils.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _batches(n: int, per_rank: int, world: int, start: int, stop: int) -> list[list[list[tuple[int, int]]]]:
    """Each rank's batches, per iteration."""
    ranks = [e2e_utils().IterationBatches(n, per_rank, dist.Context(r, world, r, torch.device("cpu")), 7, start, stop)
             for r in range(world)]
    return [list(r) for r in ranks]


def test_batches_resume_where_they_stopped_and_split_epochs_across_ranks():
    full = _batches(10, 2, 2, 0, 6)
    assert _batches(10, 2, 2, 3, 6) == [b[3:] for b in full]
    # Per epoch (2 iterations of 2 x 2 images), the ranks' samples are distinct; every sample has its own seed.
    for epoch in range(3):
        indices = [i for rank in full for batch in rank[2 * epoch:2 * epoch + 2] for i, _ in batch]
        assert len(set(indices)) == 8
    seeds = [s for rank in full for batch in rank for _, s in batch]
    assert len(set(seeds)) == len(seeds)


def test_diverging_loss_stops_with_the_iteration(voc96, tmp_path):
    env = {**os.environ, "NPROC": "1", "CONFIG": str(CONFIG), "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(["bash", str(LAUNCHER), "--work_dir", "nan", "--set", f"dataset.root={voc96}", *TINY,
                           "optimizer.learning_rate=1e30"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode != 0
    assert "error: the loss became" in proc.stderr and "at iteration" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_crf_workers_give_the_predictions_of_the_main_process(tmp_path):
    """The test's CRF in worker processes beside the network: same labels and files as inline, in order."""
    code = f"""
import sys
from pathlib import Path
import numpy as np
sys.path.insert(0, {str(ROOT / "end_to_end")!r})
from utils import CRFWorkers

rng = np.random.default_rng(0)
jobs = []
for i in range(5):
    image = rng.integers(0, 256, (40, 50, 3)).astype(np.uint8)
    probs = rng.dirichlet(np.ones(3), (40, 50)).transpose(2, 0, 1).astype(np.float32)
    jobs.append((image, probs, i))
out = {{}}
for workers in (0, 2):
    done = []
    with CRFWorkers(workers) as post:
        for image, probs, i in jobs:
            done += post.submit(image, probs, Path({str(tmp_path)!r}) / f"w{{workers}}_{{i}}.png", i)
        done += post.drain()
    assert [gt for _, gt in done] == list(range(5)), [gt for _, gt in done]
    out[workers] = [pred for pred, _ in done]
for a, b in zip(out[0], out[2]):
    assert np.array_equal(a, b)
print("ok")
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-3000:]
    for i in range(5):
        assert (tmp_path / f"w0_{i}.png").read_bytes() == (tmp_path / f"w2_{i}.png").read_bytes()


def test_coco_config_keeps_afas_lists(tmp_path):
    """AFA's COCO lists leave out the images without annotations, unlike the multi-stage default."""
    utils = e2e_utils()
    (tmp_path / "annotations").mkdir()
    cfg = utils.load_config(ROOT / "end_to_end" / "configs" / "coco.yaml", [f"dataset.root={tmp_path}"])
    source = utils.make_source(cfg)
    assert (source.split_images, source.crowd) == ("annotated", "ignore")
    recorded = utils.settings(cfg, tmp_path, "val")
    assert (recorded["coco_split_images"], recorded["coco_crowd"]) == ("annotated", "ignore")
    del cfg["dataset"]["coco_split_images"], cfg["dataset"]["coco_crowd"]  # a config written before the keys
    assert (utils.make_source(cfg).split_images, utils.make_source(cfg).crowd) == ("annotated", "ignore")
    cfg["dataset"]["coco_split_images"] = "all"
    assert utils.make_source(cfg).split_images == "all"
