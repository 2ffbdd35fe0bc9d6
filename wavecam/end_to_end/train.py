"""Train WaveCAM end to end: AFA (Ru et al., CVPR 2022) on SegFormer's MiT with the WaveCAM branch.

    torchrun --nproc_per_node N end_to_end/train.py --config end_to_end/configs/voc.yaml \
        [--work_dir DIR] [--resume auto|PATH] [--set section.key=value ...]

Every `train.eval_iters` iterations (and at the last) the CAM pseudo labels, their affinity-propagated
version and the segmentation head are evaluated on `val.split`, then a checkpoint is written; after
the last iteration the test of `test.*` runs (test.py does the same on its own, evaluate.py scores a
checkpoint's CAMs, propagated CAMs and segmentation). Under the work dir: train.log, config.yaml, tb/
(TensorBoard scalars and image panels), checkpoints/iter_<t>.pth (model, optimiser, scheduler,
iteration, config), results/val_{cam,aff,seg}.json, test/<set>/<id>.png and results/test_<set>.json.

The global batch `train.batch_size` is split over the processes, each accumulating micro-batches of
at most `train.micro_batch` (engine.sampling.batch_plan). All randomness of a step is a function of the
step: each crop draws from its sample's seed (engine.sampling, the "step" keying), dropout and
stochastic depth from the micro-batch's (engine.sampling.micro_batch_seed). So restoring the model,
optimiser and scheduler continues a run exactly where it stopped, and the processes may be fewer than
the global batch's micro-batches.
"""

from __future__ import annotations

import argparse
import functools
import logging
import warnings
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F

from wavecam.end_to_end.checkpoints import checkpoint_path, latest_checkpoint, resume_path, train_state
from wavecam.end_to_end.config import Config, config_from_args, config_yaml, front_door_parser
from wavecam.end_to_end.data import make_source, train_dataset, train_loader, validation_loader
from wavecam.end_to_end.evaluation import run_test, settings, validate
from wavecam.end_to_end.model import build_model, grid_size, poly_warmup_adamw
from wavecam.end_to_end.panels import TrainPanels, write_panels
from wavecam.end_to_end.preflight import preflight
from wavecam.engine import runtime
from wavecam.engine.cli import run_cli
from wavecam.engine.logging import DATED, add_scalars, setup_logging
from wavecam.engine.loop import Hook
from wavecam.engine.sampling import BatchPlan, batch_plan
from wavecam.engine.trainer import Trainer
from wavecam.io import atomic_path, load_json, save_json
from wavecam.labels import afa
from wavecam.labels.par import PAR
from wavecam.metrics import ConfusionMatrix
from wavecam.models.e2e import WaveAFA

log = logging.getLogger("wavecam")
# MiT's depthwise kernels (C, 1, 3, 3) get gradients whose stride along the size-1 axis differs from
# DDP's bucket view: the same memory layout, which DDP reports as a mismatch anyway.
warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = front_door_parser("Train WaveCAM end to end (AFA + WaveCAM on MiT).",
                          "where everything is written (default: the config's work_dir)",
                          "train.max_iters=100 dataset.root=/data/VOC2012")
    p.add_argument("--resume", default=None,
                   help="a checkpoint to continue from, or 'auto': the latest in <work_dir>/checkpoints if any")
    return p.parse_args(argv)


# --- one step ------------------------------------------------------------------------------------

class Stage(NamedTuple):
    """The losses and label sources one iteration trains with (the learning rate is the scheduler's)."""

    weights: dict[str, float]  # of the losses cls, wave, seg, aff
    propagated_target: bool  # the seg target is the affinity-propagated label, not the refined CAM label
    wavecam_cams: bool  # pseudo labels come from the WaveCAM kernel


def stage_at(cfg: Config, t: int) -> Stage:
    """What iteration t (0-based) trains with, from t alone, so a resumed run gets it right by construction.

    Every switch at a key N acts from iteration N + 1, as AFA's `n_iter > N` (scripts/dist_train_voc.py:
    `if n_iter <= cfg.train.cam_iters` trains the classifier alone, `if n_iter <= 6000` keeps the refined
    CAM label as the seg target; dist_train_coco.py: `<= 15000` for the seg and affinity targets):
      the seg and affinity losses count from t > train.cam_iters;
      the seg target (with `aff_from_seg_target`, the affinity one too) is the propagated label from
        t > train.prop_label_iters;
      the WaveCAM predictor's loss counts from t > wavecam.start_iter and the pseudo labels come from the
        WaveCAM kernel from t > wavecam.cams_iter (our keys, AFA's convention, so a WaveCAM key equal to
        an AFA one switches at the same iteration)."""
    train, wave = cfg.train, cfg.wavecam
    joint = t > train.cam_iters
    weights = {"cls": 1.0,
               "wave": wave.loss_weight if t > wave.start_iter else 0.0,
               "seg": cfg.loss.seg_weight if joint else 0.0,
               "aff": cfg.loss.aff_weight if joint else 0.0}
    return Stage(weights, t > train.prop_label_iters, t > wave.cams_iter)


def train_step(model: torch.nn.Module, par: PAR, batch: dict, stage: Stage, cfg: Config, ctx: runtime.Context,
               aff_mask: torch.Tensor, panels: bool = False
               ) -> tuple[dict[str, torch.Tensor], torch.Tensor, TrainPanels | None]:
    """Every loss of one micro-batch (unweighted), the predictor's accuracy and, with `panels`, what
    TensorBoard shows of it; the order of wavecam.labels.afa' docstring. Losses whose weight is still 0
    are computed all the same: under DistributedDataParallel every parameter must take part in each
    backward."""
    net: WaveAFA = runtime.unwrap(model)
    net.use_wavecam_cams = stage.wavecam_cams
    cam, device = cfg.cam, ctx.device
    images = batch["img"].to(device, non_blocking=True)
    labels = batch["label"].to(device, non_blocking=True)
    boxes = batch["img_box"]
    with runtime.autocast(cfg.train.amp, device):
        out = model(images, labels)
        cam_fn = functools.partial(net.cams_and_affinity, run_decoder=cam.decoder_statistics)
        ms = afa.multi_scale_cams(cam_fn, images, cam.scales)

    pseudo = afa.refine_cams_with_bkg(par, images, ms.cams, labels, cam.high_thre, cam.low_thre, boxes)
    if stage.propagated_target:
        seg_target = afa.propagated_label(par, images, ms, labels, afa.radius_mask(*ms.aff_size, cam.radius, device),
                                          cam.high_thre, cam.low_thre, boxes)
    else:
        seg_target = pseudo
    aff_source = seg_target if cfg.train.aff_from_seg_target else pseudo
    grid = grid_size(images.shape[2:])
    aff_target = afa.affinity_label(aff_source, grid, aff_mask)
    seg = F.interpolate(out.seg.float(), size=images.shape[2:], mode="bilinear", align_corners=False)
    losses = {"cls": F.multilabel_soft_margin_loss(out.logits.float(), labels),
              "wave": out.wave_loss.float(),
              "seg": afa.seg_loss(seg, seg_target),
              "aff": afa.affinity_loss(out.attn_pred.float(), aff_target)}
    shown = None
    if panels:
        shown = TrainPanels(images.detach(), labels, ms.cams, pseudo, seg_target, seg.detach(),
                            out.attn_pred.detach(), grid)
    return losses, out.wave_acc, shown


def micro_batch_losses(model: torch.nn.Module, par: PAR, chunk: dict, t: int, cfg: Config, ctx: runtime.Context,
                       aff_mask: torch.Tensor, panels: list | None = None) -> dict[str, torch.Tensor]:
    """The losses of one micro-batch at iteration t for the engine's loop: the weighted total
    (`loss`), the losses that count at t and, with the WaveCAM loss, the predictor's accuracy
    `wave_acc`. With `panels` (a list), the TensorBoard panels of the micro-batch are appended to it."""
    stage = stage_at(cfg, t)
    losses, acc, shown = train_step(model, par, chunk, stage, cfg, ctx, aff_mask, panels is not None)
    if shown is not None:
        panels.append(shown)
    values = {"loss": sum(stage.weights[name] * value for name, value in losses.items())}
    values.update({name: losses[name] for name, weight in stage.weights.items() if weight > 0})
    if stage.weights["wave"] > 0:
        values["wave_acc"] = acc
    return values


# --- validation ----------------------------------------------------------------------------------

def report_validation(cms: dict[str, ConfusionMatrix], t: int, cfg: Config, writer) -> None:
    """Write results/val_<kind>.json (the latest numbers and the mIoU history), log and plot them."""
    results = Path(cfg.work_dir) / "results"
    for kind, cm in cms.items():
        path = results / f"val_{kind}.json"
        history = load_json(path).get("history", []) if path.is_file() else []
        history = [h for h in history if h["iteration"] < t] + [{"iteration": t, "miou": cm.miou()}]
        save_json(path, {**cm.summary(), "iteration": t, "history": history,
                         **settings(cfg, cfg.work_dir, cfg.val.split)})
    add_scalars(writer, "val_miou", {k: cm.miou() for k, cm in cms.items()}, t)
    log.info("validation at iteration %d on %d images: mIoU cam %.4f  aff %.4f  seg %.4f", t,
             cms["seg"].n_images, cms["cam"].miou(), cms["aff"].miou(), cms["seg"].miou())


# --- the run -------------------------------------------------------------------------------------

def setup_model(cfg: Config, num_classes: int, ctx: runtime.Context) -> WaveAFA:
    net = build_model(cfg, num_classes)
    if ctx.distributed and ctx.device.type == "cuda":
        # PyTorch synchronises BatchNorm statistics only on GPUs; CPU processes keep their own.
        net = torch.nn.SyncBatchNorm.convert_sync_batchnorm(net)
    return net.to(ctx.device)


def log_start(cfg: Config, plan: BatchPlan, ctx: runtime.Context) -> None:
    data = cfg.dataset
    log.info("device %s (%s), world size %d; %s; AMP %s", ctx.device,
             torch.cuda.get_device_name(ctx.device) if ctx.device.type == "cuda" else "CPU", ctx.world_size,
             plan.describe(), runtime.amp_mode(cfg.train.amp, ctx.device))
    log.info("crops of %d after a rescale in %s (%s), padded %s", data.crop_size, data.scale_range,
             data.resample, data.pad)


def train(cfg: Config, resume: str | None, ctx: runtime.Context) -> None:
    work_dir = Path(cfg.work_dir)
    data, t_cfg = cfg.dataset, cfg.train
    found = resume_path(resume, work_dir)
    preflight(cfg, [found] if found else [])
    plan = batch_plan(t_cfg.batch_size, ctx.world_size, t_cfg.micro_batch)
    setup_logging(work_dir / "train.log", ctx, DATED)
    log_start(cfg, plan, ctx)
    if resume == "auto" and found is None:
        log.info("--resume auto: no checkpoint in %s, starting from scratch", work_dir / "checkpoints")
    # Every rank builds the same initial model, as AFA's runs seed every rank alike.
    torch.manual_seed(t_cfg.seed)
    runtime.set_cudnn(benchmark=True, deterministic=t_cfg.deterministic)

    source = make_source(cfg)
    train_set = train_dataset(cfg, source)
    val_loader = validation_loader(source, cfg.val.split, cfg, ctx)

    net = setup_model(cfg, source.num_classes, ctx)
    opt, sched = poly_warmup_adamw(net, cfg)
    scaler = runtime.loss_scaler(ctx.device, runtime.amp_dtype(t_cfg.amp, ctx.device))

    def kept() -> str:
        last = latest_checkpoint(work_dir)
        return f"the last good checkpoint {last} is kept" if last else "no checkpoint was written yet"

    model = runtime.wrap_ddp(net, ctx)
    # Checkpoints are written by the evaluation hook, beside its results: the trainer saves none itself.
    trainer = Trainer("train", ctx, model, opt, sched, scaler, train_state(cfg), stop=t_cfg.max_iters, plan=plan,
                      seed=t_cfg.seed, log_iters=t_cfg.log_iters, tb_dir=work_dir / "tb", kept=kept)
    start = trainer.resume(found)
    if ctx.is_main:
        text = config_yaml(cfg)
        with atomic_path(work_dir / "config.yaml") as tmp:
            tmp.write_text(text)
        log.info("config:\n%s", text)

    par = PAR(cfg.par.dilations, cfg.par.num_iter).to(ctx.device)
    aff_mask = afa.radius_mask(*grid_size((data.crop_size,) * 2), cfg.cam.radius, ctx.device)
    image_iters = t_cfg.log_iters * t_cfg.tb_image_every
    shown: list[TrainPanels] = []

    def loss_of(chunk: dict, t: int, k: int) -> dict[str, torch.Tensor]:
        show = trainer.writer is not None and image_iters > 0 and (t + 1) % image_iters == 0 and k == 0
        return micro_batch_losses(model, par, chunk, t, cfg, ctx, aff_mask, shown if show else None)

    def log_panels(t: int, values: dict[str, float]) -> None:
        while shown:
            write_panels(trainer.writer, shown.pop(), t)

    def evaluate_and_save(t: int, values: dict[str, float]) -> None:
        cms = validate(net, val_loader, cfg, ctx, source.num_classes)
        if ctx.is_main:
            report_validation(cms, t, cfg, trainer.writer)
        trainer.save(t, path=checkpoint_path(work_dir, t))

    loader = train_loader(train_set, plan, cfg, ctx, start)
    trainer.fit(loader, loss_of, hooks=[Hook(t_cfg.log_iters, log_panels, at_end=False),
                                        Hook(t_cfg.eval_iters, evaluate_and_save)])

    if cfg.test.after_training:
        run_test(net, cfg, ctx, work_dir, checkpoint_path(work_dir, t_cfg.max_iters), t_cfg.max_iters)
    trainer.finish(keep_state=True)  # the checkpoints are the run's outputs


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def job() -> None:
        cfg = config_from_args(args)
        train(cfg, args.resume, runtime.init(args.device))

    return run_cli(job, "--work_dir")
