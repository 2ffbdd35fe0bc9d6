"""Train WaveCAM end to end: AFA (Ru et al., CVPR 2022) on SegFormer's MiT with the WaveCAM branch.

    torchrun --nproc_per_node N end_to_end/train.py --config end_to_end/configs/voc.yaml \
        [--work_dir DIR] [--resume auto|PATH] [--set section.key=value ...]

Every `train.eval_iters` iterations (and at the last) the CAM pseudo labels, their affinity-propagated
version and the segmentation head are evaluated on `val.split`, then a checkpoint is written; after
the last iteration the test of `test.*` runs (test.py does the same on its own). Under the work dir:
train.log, config.yaml, tb/ (TensorBoard, when installed), checkpoints/iter_<t>.pth (model, optimiser,
scheduler, iteration, every rank's RNG state, config), results/val_{cam,aff,seg}.json,
test/<set>/<id>.png and results/test_<set>.json.

All randomness of a step draws from torch's generators (the crops too, see utils.SeededSamples), so
restoring their states, the optimiser and the scheduler continues a run exactly where it stopped.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import warnings
from pathlib import Path

import torch
import torch.distributed as tdist
import torch.nn.functional as F
import yaml
from tqdm import tqdm

from wavecam import dist
from wavecam import e2e_labels as lab
from wavecam.data.datasets import E2ETrainDataset, SegmentationDataset
from wavecam.io import WavecamError, atomic_path, load_checkpoint, load_json, save_checkpoint, save_json
from wavecam.metrics import ConfusionMatrix
from wavecam.models.e2e import WaveAFA, load_wave_afa_weights
from wavecam.optim import loss_scaler, optimizer_step
from wavecam.par import PAR

from utils import (
    MetricLogger,
    add_scalars,
    amp_dtype,
    autocast,
    build_model,
    checkpoint_path,
    config_changes,
    eval_loader,
    grid_size,
    latest_checkpoint,
    load_config,
    make_source,
    poly_warmup_adamw,
    prepare_gt,
    run_cli,
    run_test,
    settings,
    split_ids,
    tensorboard,
    train_loader,
    unwrap,
)

log = logging.getLogger("wavecam")
# MiT's depthwise kernels (C, 1, 3, 3) get gradients whose stride along the size-1 axis differs from
# DDP's bucket view: the same memory layout, which DDP reports as a mismatch anyway.
warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
CHECKPOINT_KEYS = ("model", "optimizer", "scheduler", "iteration", "rng", "config")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Train WaveCAM end to end (AFA + WaveCAM on MiT).",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--config", required=True, help="YAML config, e.g. end_to_end/configs/voc.yaml")
    p.add_argument("--work_dir", default=None, help="where everything is written (default: the config's work_dir)")
    p.add_argument("--resume", default=None,
                   help="a checkpoint to continue from, or 'auto': the latest in <work_dir>/checkpoints if any")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (under torchrun: the rank's GPU)")
    p.add_argument("--set", dest="overrides", action="extend", nargs="+", default=[], metavar="KEY=VALUE",
                   help="override config values, e.g. --set train.max_iters=100 dataset.root=/data/VOC2012")
    return p.parse_args(argv)


# --- one step ------------------------------------------------------------------------------------

def loss_weights(cfg: dict, t: int) -> dict[str, float]:
    """The classifier trains alone for the first `cam_iters` iterations, then with the segmentation
    and affinity losses; the WaveCAM predictor's loss counts from `wavecam.start_iter`."""
    joint = t >= cfg["train"]["cam_iters"]
    return {"cls": 1.0,
            "wave": float(cfg["wavecam"]["loss_weight"]) if t >= cfg["wavecam"]["start_iter"] else 0.0,
            "seg": float(cfg["loss"]["seg_weight"]) if joint else 0.0,
            "aff": float(cfg["loss"]["aff_weight"]) if joint else 0.0}


def train_step(model: torch.nn.Module, par: PAR, batch: dict, t: int, cfg: dict, ctx: dist.Context,
               aff_mask: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Every loss of one iteration (unweighted) and the predictor's accuracy; the order of
    wavecam.e2e_labels' docstring. Losses whose weight is still 0 are computed all the same: under
    DistributedDataParallel every parameter must take part in each backward."""
    net: WaveAFA = unwrap(model)
    net.use_wavecam_cams = t >= cfg["wavecam"]["cams_iter"]  # from the iteration alone, so a resume gets it right
    cam, device = cfg["cam"], ctx.device
    images = batch["img"].to(device, non_blocking=True)
    labels = batch["label"].to(device, non_blocking=True)
    boxes = batch["img_box"]
    with autocast(cfg, device):
        out = model(images, labels)
        ms = lab.multi_scale_cams(net.cams_and_affinity, images, cam["scales"])

    pseudo = lab.refine_cams_with_bkg(par, images, ms.cams, labels, cam["high_thre"], cam["low_thre"], boxes)
    if t < cfg["train"]["prop_label_iters"]:
        seg_target = pseudo
    else:
        seg_target = lab.propagated_label(par, images, ms, labels, lab.radius_mask(*ms.aff_size, cam["radius"], device),
                                          cam["high_thre"], cam["low_thre"], boxes)
    aff_source = seg_target if cfg["train"]["aff_from_seg_target"] else pseudo
    aff_target = lab.affinity_label(aff_source, grid_size(images.shape[2:]), aff_mask)
    seg = F.interpolate(out.seg.float(), size=images.shape[2:], mode="bilinear", align_corners=False)
    losses = {"cls": F.multilabel_soft_margin_loss(out.logits.float(), labels),
              "wave": out.wave_loss.float(),
              "seg": lab.seg_loss(seg, seg_target),
              "aff": lab.affinity_loss(out.attn_pred.float(), aff_target)}
    return losses, out.wave_acc


# --- validation ----------------------------------------------------------------------------------

@torch.no_grad()
def validate(net: WaveAFA, loader, cfg: dict, ctx: dist.Context, num_classes: int) -> dict[str, ConfusionMatrix]:
    """Confusions over the validation images (all ranks summed) of AFA's three predictions: `cam`, the
    multi-scale CAMs with a background score of `cam.bkg_score`; `aff`, those CAMs propagated by the
    affinity of the last stage (background score `cam.low_thre`); `seg`, the segmentation head."""
    cam, device = cfg["cam"], ctx.device
    cms = {k: ConfusionMatrix(num_classes + 1) for k in ("cam", "aff", "seg")}
    net.eval()
    for item in tqdm(loader, desc="validate", disable=not ctx.is_main, leave=False):
        images, labels, gt = item["img"].to(device), item["label"].to(device), item["gt"][0].numpy()
        with autocast(cfg, device):
            out = net(images)
            cams = lab.multi_scale_cams(net.cams_and_affinity, images, cam["scales"]).cams  # (1, C, H, W)
        grid = grid_size(images.shape[2:])
        aff = lab.propagate_cams(F.interpolate(cams, size=grid, mode="bilinear", align_corners=False),
                                 out.attn_pred.float(), labels, cam["low_thre"],
                                 lab.radius_mask(*grid, cam["radius"], device))
        preds = {"cam": lab.cam_to_label(cams, labels, cam["bkg_score"]),
                 "aff": F.interpolate(aff, size=gt.shape, mode="bilinear", align_corners=False).argmax(1),
                 "seg": F.interpolate(out.seg.float(), size=gt.shape, mode="bilinear", align_corners=False).argmax(1)}
        for k, pred in preds.items():
            cms[k].update(pred[0].cpu().numpy(), gt)
    net.train()
    dist.sum_confusions(list(cms.values()), ctx)
    return cms


def report_validation(cms: dict[str, ConfusionMatrix], t: int, cfg: dict, writer) -> None:
    """Write results/val_<kind>.json (the latest numbers and the mIoU history), log and plot them."""
    results = Path(cfg["work_dir"]) / "results"
    for kind, cm in cms.items():
        path = results / f"val_{kind}.json"
        history = load_json(path).get("history", []) if path.is_file() else []
        history = [h for h in history if h["iteration"] < t] + [{"iteration": t, "miou": cm.miou()}]
        save_json(path, {**cm.summary(), "iteration": t, "history": history,
                         **settings(cfg, cfg["work_dir"], cfg["val"]["split"])})
    add_scalars(writer, "val_miou", {k: cm.miou() for k, cm in cms.items()}, t)
    log.info("validation at iteration %d on %d images: mIoU cam %.4f  aff %.4f  seg %.4f", t,
             cms["seg"].n_images, cms["cam"].miou(), cms["aff"].miou(), cms["seg"].miou())


# --- checkpoints ---------------------------------------------------------------------------------

def rng_state(ctx: dist.Context) -> dict[str, torch.Tensor]:
    state = {"torch": torch.get_rng_state()}
    if ctx.device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(ctx.device)
    return state


def save_state(path: Path, net: WaveAFA, opt, sched, scaler, t: int, cfg: dict, ctx: dist.Context) -> None:
    """Rank 0 writes the checkpoint, with every rank's RNG state (collective: all ranks call it)."""
    states = [None] * ctx.world_size
    if ctx.distributed:
        tdist.all_gather_object(states, rng_state(ctx))
    else:
        states = [rng_state(ctx)]
    if ctx.is_main:
        state = {"model": net.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                 "iteration": t, "rng": states, "config": cfg}
        if scaler.is_enabled():
            state["scaler"] = scaler.state_dict()
        save_checkpoint(path, state)
        log.info("wrote %s", path)
    dist.barrier(ctx)


def restore(path: Path, net: WaveAFA, opt, sched, scaler, cfg: dict, ctx: dist.Context) -> int:
    """Load a checkpoint of save_state into model, optimiser, scheduler and this rank's RNG; returns
    the iteration to continue from."""
    ckpt = load_checkpoint(path)
    missing = [k for k in CHECKPOINT_KEYS if not isinstance(ckpt, dict) or k not in ckpt]
    if missing:
        raise WavecamError(f"{path}: not a training checkpoint of end_to_end/train.py (no {', '.join(missing)}); "
                           "to start from other weights set model.pretrained or use test.py --checkpoint")
    load_wave_afa_weights(net, ckpt["model"])
    opt.load_state_dict(ckpt["optimizer"])
    sched.load_state_dict(ckpt["scheduler"])
    if "scaler" in ckpt:
        scaler.load_state_dict(ckpt["scaler"])
    changed = config_changes(ckpt["config"], cfg)
    if changed:
        log.warning("resuming with a config that differs from the checkpoint's in: %s", ", ".join(changed))
    t = int(ckpt["iteration"])
    if len(ckpt["rng"]) == ctx.world_size:
        state = ckpt["rng"][ctx.rank]
        torch.set_rng_state(state["torch"])
        if "cuda" in state and ctx.device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda"], ctx.device)
    else:
        log.warning("%s was written by %d processes, resumed by %d: training goes on, but not exactly as it "
                    "would have without the stop", path, len(ckpt["rng"]), ctx.world_size)
        torch.manual_seed(cfg["train"]["seed"] + ctx.rank + t)
    log.info("resumed from %s at iteration %d", path, t)
    return t


def resume_path(resume: str | None, work_dir: Path) -> Path | None:
    if resume != "auto":
        return Path(resume) if resume else None
    found = latest_checkpoint(work_dir)
    if found is None:
        log.info("--resume auto: no checkpoint in %s, starting from scratch", work_dir / "checkpoints")
    return found


# --- the run -------------------------------------------------------------------------------------

def setup_model(cfg: dict, num_classes: int, ctx: dist.Context) -> WaveAFA:
    net = build_model(cfg, num_classes)
    if ctx.distributed and ctx.device.type == "cuda":
        # PyTorch synchronises BatchNorm statistics only on GPUs; CPU processes keep their own.
        net = torch.nn.SyncBatchNorm.convert_sync_batchnorm(net)
    return net.to(ctx.device)


def train(cfg: dict, resume: str | None, ctx: dist.Context) -> None:
    work_dir = Path(cfg["work_dir"])
    dist.setup_logging(work_dir / "train.log", ctx)
    data, t_cfg = cfg["dataset"], cfg["train"]
    torch.manual_seed(t_cfg["seed"] + ctx.rank)  # ranks differ in dropout, as separate GPUs of AFA's runs do
    torch.backends.cudnn.deterministic = bool(t_cfg["deterministic"])
    torch.backends.cudnn.benchmark = not t_cfg["deterministic"]

    source = make_source(cfg)
    train_set = E2ETrainDataset(source, split_ids(source, data["train_split"]), data["crop_size"],
                                tuple(data["scale_range"]) if data["scale_range"] else None)
    val_ids = dist.shard(split_ids(source, cfg["val"]["split"]), ctx)
    prepare_gt(source, val_ids)
    val_loader = eval_loader(SegmentationDataset(source, val_ids), cfg, ctx)

    net = setup_model(cfg, source.num_classes, ctx)
    opt, sched = poly_warmup_adamw(net, cfg)
    found = resume_path(resume, work_dir)
    scaler = loss_scaler(ctx.device, amp_dtype(cfg, ctx.device))
    start = restore(found, net, opt, sched, scaler, cfg, ctx) if found else 0
    model = net
    if ctx.distributed:
        model = torch.nn.parallel.DistributedDataParallel(
            net, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None)
    if ctx.is_main:
        with atomic_path(work_dir / "config.yaml") as tmp:
            tmp.write_text(yaml.safe_dump(cfg, sort_keys=False))
        log.info("config:\n%s", yaml.safe_dump(cfg, sort_keys=False))
    writer = tensorboard(work_dir / "tb", ctx)

    par = PAR(cfg["par"]["dilations"], cfg["par"]["num_iter"]).to(ctx.device)
    aff_mask = lab.radius_mask(*grid_size((data["crop_size"],) * 2), cfg["cam"]["radius"], ctx.device)
    max_iters = t_cfg["max_iters"]
    logger = MetricLogger(start, max_iters, t_cfg["samples_per_gpu"] * ctx.world_size, t_cfg["log_iters"])
    model.train()
    for t, batch in logger.iterations(train_loader(train_set, cfg, ctx, start)):
        losses, acc = train_step(model, par, batch, t, cfg, ctx, aff_mask)
        weights = loss_weights(cfg, t)
        loss = sum(weights[k] * v for k, v in losses.items())
        if not math.isfinite(loss.item()):
            found = latest_checkpoint(work_dir)
            kept = f"the last good checkpoint {found} is kept" if found else "no checkpoint was written yet"
            raise WavecamError(f"the loss became {loss.item()} at iteration {t} "
                               f"({', '.join(f'{k} {v.item():.4g}' for k, v in losses.items())}); {kept}. "
                               "Lower the learning rate and resume.")
        optimizer_step(loss, opt, scaler)
        sched.step()

        values = {"lr": opt.param_groups[0]["lr"], "loss": loss.item(), **{k: v.item() for k, v in losses.items()},
                  "wave_acc": acc.item()}
        logger.step_done(t, **values)
        if (t + 1) % t_cfg["log_iters"] == 0:
            add_scalars(writer, "train", values, t + 1)
        if (t + 1) % t_cfg["eval_iters"] == 0 or t + 1 == max_iters:
            with logger.untimed():
                # On a fork of the generators: validation must not shift the training's random streams.
                with torch.random.fork_rng(devices=[ctx.device] if ctx.device.type == "cuda" else []):
                    cms = validate(net, val_loader, cfg, ctx, source.num_classes)
                if ctx.is_main:
                    report_validation(cms, t + 1, cfg, writer)
                save_state(checkpoint_path(work_dir, t + 1), net, opt, sched, scaler, t + 1, cfg, ctx)

    if cfg["test"]["after_training"]:
        run_test(net, cfg, ctx, work_dir, checkpoint_path(work_dir, max_iters), max_iters)
    if writer is not None:
        writer.close()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def job() -> None:
        cfg = load_config(args.config, args.overrides)
        if args.work_dir:
            cfg["work_dir"] = args.work_dir
        train(cfg, args.resume, dist.init(args.device))

    return run_cli(job)


if __name__ == "__main__":
    sys.exit(main())
