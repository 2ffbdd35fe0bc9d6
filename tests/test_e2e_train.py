"""End-to-end trainer: the seed's install and launch commands from end_to_end/, the log and TensorBoard,
exact resume, 1 and 2 CPU processes, the global batch and its accumulation, AFA's schedule edges, the
order of the checks, evaluate.py."""

import copy
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from wavecam.end_to_end.config import Config, as_dict, load_config
from wavecam.end_to_end.data import make_source, train_dataset, train_loader
from wavecam.end_to_end.evaluation import settings
from wavecam.end_to_end.model import build_model, grid_size, poly_warmup_adamw
from wavecam.end_to_end.train import micro_batch_losses, stage_at
from wavecam.engine import runtime
from wavecam.engine.loop import accumulated_step, optimizer_step
from wavecam.engine.runtime import loss_scaler
from wavecam.engine.sampling import ShuffledBatches, batch_plan
from wavecam.errors import WavecamError
from wavecam.io import load_checkpoint
from wavecam.labels import afa
from wavecam.labels.par import PAR

ROOT = Path(__file__).resolve().parents[1]
E2E = ROOT / "end_to_end"
LAUNCHER = E2E / "train" / "run_wavecam_voc.sh"
CONFIG = E2E / "configs" / "synthetic.yaml"
# Four iterations (t = 0..3) that pass every switch of the schedule, each acting after its value as
# AFA's `n_iter > N`: classification alone at t = 0, 1; the seg, affinity and WaveCAM losses from t = 2;
# propagated seg targets and WaveCAM pseudo labels from t = 3. Validation and a checkpoint every 2.
TINY = ["train.max_iters=4", "train.eval_iters=2", "train.log_iters=2", "train.cam_iters=1",
        "train.prop_label_iters=2", "wavecam.start_iter=1", "wavecam.cams_iter=2"]
N_VAL = 3
IMAGE_TAGS = {"train/images", "cam/cams", "labels/pseudo", "labels/seg_target", "labels/seg_pred",
              "affinity/pixel_0", "affinity/pixel_30", "affinity/pixel_60", "affinity/pixel_90"}


@pytest.fixture(scope="module")
def voc96(tmp_path_factory):
    """Images of 96 pixels: the smallest whose half-scale CAMs still fit MiT's first-stage reduction."""
    from wavecam.data.synthetic import make_synthetic_voc

    return make_synthetic_voc(tmp_path_factory.mktemp("voc96"), n_train=8, n_val=N_VAL, size=96, seed=0)


def seed_env(**extra: str) -> dict:
    """The environment of a user who installed wavecam into this interpreter's environment: its
    `python` first on PATH, as the launcher's default PYTHON=python expects."""
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    return {**os.environ, "PATH": path, "OMP_NUM_THREADS": "1", **extra}


def launch(nproc: int, *args: str, cwd: Path = E2E, config: str = "configs/synthetic.yaml",
           check: bool = True) -> subprocess.CompletedProcess:
    """The seed's `bash train/run_wavecam_voc.sh`, run from end_to_end/ (by default) with the synthetic config."""
    script = "train/run_wavecam_voc.sh" if cwd == E2E else str(LAUNCHER)
    proc = subprocess.run(["bash", script, "--device", "cpu", *args], cwd=cwd,
                          env=seed_env(NPROC=str(nproc), CONFIG=config), capture_output=True, text=True, timeout=600)
    if check:
        assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


@pytest.fixture(scope="module")
def one_process(voc96, tmp_path_factory):
    """A 4-iteration run on one process (the global batch of 4 as 2 accumulated micro-batches of 2)."""
    work_dir = tmp_path_factory.mktemp("one") / "full"
    launch(1, "--work_dir", str(work_dir), "--set", f"dataset.root={voc96}", *TINY, "test.crf=true")
    return work_dir


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


# --- the seed's commands -------------------------------------------------------------------------

def test_seed_install_resolves_from_end_to_end():
    """`cd end_to_end && pip install -r requirements.txt`: pip reads `-c ../constraints.txt` relative to
    the file and `-e ..` relative to the working directory, both the repository root from here. A dry
    run without index, dependencies or build isolation checks exactly that, offline: pip finds the
    constraints and builds the editable project's metadata from the root's pyproject.toml."""
    pytest.importorskip("setuptools")  # the build backend, which --no-build-isolation takes from here
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--no-deps", "--no-index",
                           "--no-build-isolation", "-r", "requirements.txt"], cwd=E2E, capture_output=True,
                          text=True, timeout=300, env=seed_env(PIP_DISABLE_PIP_VERSION_CHECK="1"))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "Would install wavecam" in proc.stdout, proc.stdout[-2000:]
    assert f"file://{ROOT}" in proc.stdout + proc.stderr  # the root, not a folder above it
    # TensorBoard comes with wavecam itself, so train.py never reports it missing (no tomllib on 3.10).
    deps = re.search(r"^dependencies = \[(.*?)^\]", (ROOT / "pyproject.toml").read_text(), re.S | re.M).group(1)
    assert '"tensorboard>=' in deps


@pytest.mark.slow
def test_one_process_from_end_to_end_logs_plots_and_resumes_exactly(one_process, voc96, tmp_path):
    test = check_run(one_process, "val_crf")
    assert test["crf"] is True and test["iteration"] == 4

    text = (one_process / "train.log").read_text()
    assert re.match(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2} INFO ", text)  # dated timestamps
    lines = [line for line in text.splitlines() if re.match(r"\d{4}-\d{2}-\d{2} ", line)]
    assert ("device cpu (CPU), world size 1; global batch 4 = 1 process(es) x 4 image(s), gradients accumulated "
            "over 2 micro-batches of 2; AMP off (float32)") in lines[0]
    iters = {m.group(1): line for line in lines if (m := re.search(r"iter (\d+)/4 ", line))}
    # Iterations 0 and 1 train the classifier alone: no seg, affinity or WaveCAM numbers yet.
    assert not re.search(r"\b(seg|aff|wave|wave_acc) \d", iters["2"]) and re.search(r"\bcls \d", iters["2"])
    assert all(re.search(rf"\b{k} \d", iters["4"]) for k in ("cls", "seg", "aff", "wave", "wave_acc"))
    assert "TensorBoard is not installed" not in text

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(one_process / "tb"), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    assert set(events.Tags()["images"]) == IMAGE_TAGS
    assert [e.step for e in events.Images("affinity/pixel_30")] == [2, 4]  # every log_iters x tb_image_every
    assert [e.step for e in events.Scalars("train/seg")] == [4]  # only once it counts

    # A run stopped after its iteration-2 checkpoint, resumed.
    (tmp_path / "stopped" / "checkpoints").mkdir(parents=True)
    shutil.copy(one_process / "checkpoints" / "iter_0000002.pth", tmp_path / "stopped" / "checkpoints")
    launch(1, "--work_dir", str(tmp_path / "stopped"), "--resume", "auto", "--set", f"dataset.root={voc96}", *TINY,
           "test.after_training=false")
    assert "resumed from" in (tmp_path / "stopped" / "train.log").read_text()

    full = load_checkpoint(one_process / "checkpoints" / "iter_0000004.pth")
    # The resolved config, saved with the run and in its checkpoints as a plain dict, reads back as it ran.
    ran = load_config(CONFIG, ["work_dir=" + str(one_process), f"dataset.root={voc96}", *TINY, "test.crf=true"])
    assert load_config(one_process / "config.yaml") == ran
    assert full["settings"] == as_dict(ran)
    resumed = load_checkpoint(tmp_path / "stopped" / "checkpoints" / "iter_0000004.pth")
    assert full["model"].keys() == resumed["model"].keys()
    for k, v in full["model"].items():
        assert torch.equal(v, resumed["model"][k]), k
    for i, state in full["optimizer"]["state"].items():
        assert torch.equal(state["exp_avg_sq"], resumed["optimizer"]["state"][i]["exp_avg_sq"])
    assert full["scheduler"] == resumed["scheduler"]


@pytest.mark.slow
def test_two_processes_take_the_step_of_one_accumulating(one_process, voc96, tmp_path):
    """The same global batch of 4 on 2 gloo processes (2 images each, no accumulation) trains the
    weights one process accumulating 2 micro-batches of 2 trains. On CPUs every process normalises
    its own micro-batch, as accumulation does (CUDA runs synchronise BatchNorm instead). The step's
    arithmetic differs only in exact halvings and one sum, so the weights agree to rounding; the
    tolerance is far below the smallest update of these 4 steps (the learning rate at t = 1, 3e-6)."""
    launch(2, "--work_dir", str(tmp_path / "ddp"), "--set", f"dataset.root={voc96}", *TINY, "test.crf=false")
    assert check_run(tmp_path / "ddp", "val")["crf"] is False
    log_text = (tmp_path / "ddp" / "train.log").read_text()
    assert "world size 2; global batch 4 = 2 process(es) x 2 image(s); AMP" in log_text
    two = load_checkpoint(tmp_path / "ddp" / "checkpoints" / "iter_0000004.pth")["model"]
    one = load_checkpoint(one_process / "checkpoints" / "iter_0000004.pth")["model"]
    for k, v in one.items():
        if "running_" not in k and "num_batches_tracked" not in k:  # DDP keeps rank 0's BatchNorm buffers
            torch.testing.assert_close(two[k], v, rtol=0, atol=1e-7, msg=k)


@pytest.mark.slow
def test_evaluate_scores_a_checkpoint_as_training_validated_it(one_process, voc96, tmp_path):
    proc = subprocess.run([sys.executable, "evaluate.py", "--config", "configs/synthetic.yaml", "--device", "cpu",
                           "--checkpoint", str(one_process / "checkpoints" / "iter_0000004.pth"),
                           "--work_dir", str(tmp_path), "--set", f"dataset.root={voc96}", *TINY],
                          cwd=E2E, env=seed_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "mIoU" in proc.stdout
    for kind in ("cam", "aff", "seg"):
        scored = json.loads((tmp_path / "results" / f"eval_val_{kind}.json").read_text())
        validated = json.loads((one_process / "results" / f"val_{kind}.json").read_text())
        assert scored["cams"] == "wavecam" and scored["iteration"] == 4 and scored["n_images"] == N_VAL
        assert scored["iou"] == pytest.approx(validated["iou"], abs=1e-9), kind


# --- checks before anything is written -----------------------------------------------------------

@pytest.mark.slow
def test_missing_dataset_root_is_one_readable_error_and_no_log(tmp_path):
    proc = subprocess.run([sys.executable, str(E2E / "train.py"), "--config", str(CONFIG), "--work_dir", "w",
                           "--set", f"dataset.root={tmp_path / 'nowhere'}"], cwd=tmp_path, capture_output=True,
                          text=True, env=seed_env())
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: dataset.root") and "Traceback" not in proc.stderr
    assert not (tmp_path / "w").exists()


@pytest.mark.slow
def test_an_unwritable_work_dir_is_one_readable_error(tmp_path):
    """A work dir that cannot be created (below a file here: unlike a read-only folder, root cannot write
    there either) is one `error:` line naming it, not a traceback."""
    (tmp_path / "a_file").write_text("")
    work_dir = tmp_path / "a_file" / "w"
    proc = subprocess.run([sys.executable, str(E2E / "train.py"), "--config", str(CONFIG), "--work_dir", str(work_dir),
                           "--set", f"dataset.root={tmp_path}"], cwd=tmp_path, capture_output=True, text=True,
                          env=seed_env())
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith(f"error: cannot write or read {work_dir}: Not a directory; free some space or "
                                  "choose a writable --work_dir"), proc.stderr


@pytest.mark.slow
def test_missing_weights_are_reported_before_the_coco_masks_are_rendered(tmp_path):
    """The COCO config with a missing mit_b1.pth: the error says where NVlabs' weights come from and
    where they go, and nothing was indexed, rendered or logged before it."""
    from wavecam.data.synthetic import make_synthetic_coco

    root = make_synthetic_coco(tmp_path / "coco", n_train=4, n_val=2, size=64, seed=0)
    cache = tmp_path / "cache"
    proc = launch(1, "--work_dir", str(tmp_path / "w"), "--set", f"dataset.root={root}", f"dataset.cache_dir={cache}",
                  cwd=tmp_path, config=str(E2E / "configs" / "coco.yaml"), check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    message = proc.stderr
    assert message.startswith("error: model.pretrained pretrained/mit_b1.pth: file not found")
    assert "https://github.com/NVlabs/SegFormer" in message and "ImageNet-1k" in message
    assert str(tmp_path / "pretrained" / "mit_b1.pth") in message and "--set model.pretrained=PATH" in message
    assert not cache.exists() and not (tmp_path / "w").exists()


# --- the global batch ----------------------------------------------------------------------------

def test_batch_plan_splits_the_global_batch_over_processes_and_micro_batches():
    def plan(batch_size, micro_batch, world):
        return batch_plan(batch_size, world, micro_batch)

    assert [(p.per_process, p.micro, p.steps) for p in (plan(4, 2, 1), plan(4, 2, 2), plan(4, 2, 4))] == [
        (4, 2, 2), (2, 2, 1), (1, 1, 1)]
    assert (plan(8, 2, 1).micro, plan(8, 2, 1).steps) == (2, 4)  # AFA's COCO batch on one GPU
    assert (plan(6, 4, 1).micro, plan(6, 4, 1).steps) == (3, 2)  # equal micro-batches, the fewest
    assert (plan(5, 2, 1).micro, plan(5, 2, 1).steps) == (1, 5)
    with pytest.raises(WavecamError, match="not divisible by the 3 processes"):
        plan(4, 2, 3)


def _batches(n: int, global_batch: int, world: int, start: int, stop: int) -> list[list[list[tuple[int, int]]]]:
    """Each rank's batches, per iteration."""
    plan = batch_plan(global_batch, world)
    return [list(ShuffledBatches(n, plan, r, 7, start, stop, "step")) for r in range(world)]


def test_batches_resume_where_they_stopped_and_split_epochs_across_ranks():
    full = _batches(10, 4, 2, 0, 6)
    assert _batches(10, 4, 2, 3, 6) == [b[3:] for b in full]
    # Per epoch (2 iterations of 2 x 2 images), the ranks' samples are distinct; every sample has its own seed.
    for epoch in range(3):
        indices = [i for rank in full for batch in rank[2 * epoch:2 * epoch + 2] for i, _ in batch]
        assert len(set(indices)) == 8
    seeds = [s for rank in full for batch in rank for _, s in batch]
    assert len(set(seeds)) == len(seeds)
    # One process takes the samples (and seeds) of both ranks, in rank order.
    one = _batches(10, 4, 1, 0, 6)[0]
    assert one == [full[0][t] + full[1][t] for t in range(6)]


def test_accumulated_step_equals_the_step_on_the_whole_batch():
    """A mean-over-samples loss on a small float64 model: the whole batch of 4 in one backward and
    2 micro-batches of 2 accumulated give the same gradient and step. Only the order of the sums
    differs, which float64 rounds at ~1e-16; 1e-12 leaves room for any CPU's reduction order while a
    wrong loss scale or a lost micro-batch would be off by tens of percent."""
    torch.manual_seed(0)
    x, y = torch.randn(4, 3, 8, 8, dtype=torch.float64), torch.randint(0, 2, (4, 5)).double()
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 6, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                              torch.nn.Flatten(), torch.nn.Linear(6, 5)).double()

    def step(chunks):
        model = copy.deepcopy(net)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
        optimizer_step(model, opt, loss_scaler(torch.device("cpu"), None), chunks,
                       lambda c, _: {"loss": torch.nn.functional.multilabel_soft_margin_loss(model(c[0]), c[1])})
        return model

    whole = step([(x, y)])
    accumulated = step([(x[:2], y[:2]), (x[2:], y[2:])])
    for (name, a), b in zip(whole.named_parameters(), accumulated.parameters()):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-12, atol=1e-14, msg=name)
        torch.testing.assert_close(b, a, rtol=1e-12, atol=1e-14, msg=name)
    halved = step([(x[:2], y[:2])])  # a different batch does change the step
    assert not torch.allclose(halved[0].weight.grad, whole[0].weight.grad, rtol=1e-3)


@pytest.mark.slow
def test_accumulating_micro_batches_steps_as_the_processes_they_replace(voc96):
    """The trainer's own iteration (WaveAFA, multi-scale CAMs, PAR, propagated labels, every loss on):
    one process accumulating the global batch of 4 as 2 micro-batches of 2 gets the gradient DDP gives
    2 processes of 2 images, the mean of theirs; the same images and the same dropout draws. The two
    do the same arithmetic but for a halving (exact in binary floating point) and one sum, so on one
    thread they agree to the last bit; the tolerance (1e-5 relative, 1e-6 of a tensor's largest
    gradient absolute) admits a multi-threaded CPU reordering a reduction, where a wrong loss scale or
    another dropout draw would be off by far more."""
    cfg = load_config(CONFIG, [f"dataset.root={voc96}", "train.cam_iters=0", "train.prop_label_iters=0",
                                       "wavecam.start_iter=0", "wavecam.cams_iter=0", "par.num_iter=3"])
    t = 1  # every switch on
    source = make_source(cfg)
    dataset = train_dataset(cfg, source)
    torch.manual_seed(0)
    net = build_model(cfg, source.num_classes)
    par = PAR(cfg.par.dilations, cfg.par.num_iter)
    aff_mask = afa.radius_mask(*grid_size((64, 64)), cfg.cam.radius)

    def run(world: int, rank: int):
        ctx = runtime.Context(rank, world, torch.device("cpu"))
        plan = batch_plan(4, world, 2)
        model = copy.deepcopy(net)
        opt, _ = poly_warmup_adamw(model, cfg)
        batch = next(iter(train_loader(dataset, plan, cfg, ctx, t)))
        values = accumulated_step(model, opt, loss_scaler(ctx.device, None), batch, t,
                                  lambda c, step, k: micro_batch_losses(model, par, c, step, cfg, ctx, aff_mask),
                                  plan, ctx, cfg.train.seed)
        return batch, values, {n: p.grad for n, p in model.named_parameters() if p.requires_grad}

    one_batch, one_values, one_grads = run(1, 0)
    ranks = [run(2, r) for r in range(2)]
    assert torch.equal(one_batch["img"], torch.cat([batch["img"] for batch, _, _ in ranks]))
    assert set(one_values) == {"lr", "loss", "cls", "wave", "seg", "aff", "wave_acc"}
    for k, v in one_values.items():
        assert v == pytest.approx(sum(values[k] for _, values, _ in ranks) / 2, rel=1e-5), k
    for name, grad in one_grads.items():
        ref = (ranks[0][2][name] + ranks[1][2][name]) / 2
        torch.testing.assert_close(grad, ref, rtol=1e-5, atol=1e-6 * float(ref.abs().max()) + 1e-30, msg=name)


# --- AFA's schedule ------------------------------------------------------------------------------

def test_schedule_switches_where_afa_does():
    """AFA's dist_train_voc.py trains the classifier alone while `n_iter <= cfg.train.cam_iters` and
    keeps the refined CAM label as the seg target while `n_iter <= 6000`; dist_train_coco.py uses
    5000 and `<= 15000`, for the affinity target too. Its PolyWarmupAdamW sets the learning rate of
    step g (0-based) to lr * (1 - (1 - g / warmup) * (1 - ratio)) for g < warmup, then
    lr * (1 - g / max_iter) ** power."""
    voc = load_config(E2E / "configs" / "voc.yaml")
    coco = load_config(E2E / "configs" / "coco.yaml")
    assert stage_at(voc, 2000).weights == {"cls": 1.0, "wave": 0.0, "seg": 0.0, "aff": 0.0}
    assert stage_at(voc, 2001).weights == {"cls": 1.0, "wave": 1.0, "seg": 0.1, "aff": 0.1}
    assert (stage_at(voc, 6000).propagated_target, stage_at(voc, 6001).propagated_target) == (False, True)
    assert (stage_at(voc, 4000).wavecam_cams, stage_at(voc, 4001).wavecam_cams) == (False, True)
    assert stage_at(coco, 5000).weights["seg"] == 0 and stage_at(coco, 5001).weights == {
        "cls": 1.0, "wave": 0.1, "seg": 0.1, "aff": 0.1}
    assert (stage_at(coco, 15000).propagated_target, stage_at(coco, 15001).propagated_target) == (False, True)
    assert coco.train.aff_from_seg_target and not voc.train.aff_from_seg_target

    def afa_lr(g: int, cfg: Config) -> float:
        s, lr, max_iter = cfg.scheduler, cfg.optimizer.learning_rate, cfg.train.max_iters
        if g < s.warmup_iter:
            return lr * (1 - (1 - g / s.warmup_iter) * (1 - s.warmup_ratio))
        return lr * (1 - g / max_iter) ** s.power

    class OneParameter:
        def param_groups(self, lr, weight_decay):
            return [{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": lr, "weight_decay": weight_decay}]

    for cfg in (voc, coco):
        opt, sched = poly_warmup_adamw(OneParameter(), cfg)
        for g in range(3):  # the rate an iteration steps with, as the trainer reads it before sched.step()
            assert opt.param_groups[0]["lr"] == pytest.approx(afa_lr(g, cfg), rel=1e-12)
            opt.step()
            sched.step()
        factor = sched.lr_lambdas[0]
        warmup = cfg.scheduler.warmup_iter
        for g in (0, 1, warmup - 1, warmup, warmup + 1, cfg.train.max_iters - 1):
            assert cfg.optimizer.learning_rate * factor(g) == pytest.approx(afa_lr(g, cfg), rel=1e-12), g


def test_configs_default_to_afas_published_runs():
    """AFA's launch/run_sbatch_attn_reg.sh: 2 processes x samples_per_gpu 2, --crop_size 512;
    run_sbatch_attn_reg_coco.sh: 4 processes x 2, --crop_size 512."""
    for name, batch in (("voc", 4), ("coco", 8)):
        cfg = load_config(E2E / "configs" / f"{name}.yaml")
        assert (cfg.dataset.crop_size, cfg.train.batch_size, cfg.train.micro_batch) == (512, batch, 2)
        assert (cfg.dataset.resample, cfg.dataset.pad) == ("pil_bilinear", "black")


# --- the rest ------------------------------------------------------------------------------------

@pytest.mark.slow
def test_diverging_loss_stops_with_the_iteration(voc96, tmp_path):
    proc = launch(1, "--work_dir", str(tmp_path / "nan"), "--set", f"dataset.root={voc96}", *TINY,
                  "optimizer.learning_rate=1e30", check=False)
    assert proc.returncode != 0
    assert "error: the loss became" in proc.stderr and "at iteration" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.slow
def test_crf_workers_give_the_predictions_of_the_main_process(tmp_path):
    """The test's CRF in a BackgroundPool beside the network: same labels and files as inline, in order."""
    code = f"""
from pathlib import Path
import numpy as np
from wavecam.end_to_end.evaluation import _crf_prediction
from wavecam.engine.parallel import BackgroundPool

rng = np.random.default_rng(0)
jobs = []
for i in range(5):
    image = rng.integers(0, 256, (40, 50, 3)).astype(np.uint8)
    probs = rng.dirichlet(np.ones(3), (40, 50)).transpose(2, 0, 1).astype(np.float32)
    jobs.append((image, probs, i))
out = {{}}
for workers in (0, 2):
    done = []
    with BackgroundPool(workers, _crf_prediction) as post:
        for image, probs, i in jobs:
            done += post.submit((image, probs, Path({str(tmp_path)!r}) / f"w{{workers}}_{{i}}.png"), i)
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
    (tmp_path / "annotations").mkdir()
    cfg = load_config(E2E / "configs" / "coco.yaml", [f"dataset.root={tmp_path}"])
    source = make_source(cfg)
    assert (source.split_images, source.crowd) == ("annotated", "ignore")
    recorded = settings(cfg, tmp_path, "val")
    assert (recorded["coco_split_images"], recorded["coco_crowd"]) == ("annotated", "ignore")
    # A config written before the keys gets the defaults.
    older = tmp_path / "older.yaml"
    older.write_text(re.sub(r"  coco_(split_images|crowd):.*\n", "", (E2E / "configs" / "coco.yaml").read_text()))
    assert "coco_crowd" not in older.read_text() and "coco_split_images" not in older.read_text()
    cfg = load_config(older, [f"dataset.root={tmp_path}"])
    assert (make_source(cfg).split_images, make_source(cfg).crowd) == ("annotated", "ignore")
    cfg = load_config(older, [f"dataset.root={tmp_path}", "dataset.coco_split_images=all"])
    assert make_source(cfg).split_images == "all"
