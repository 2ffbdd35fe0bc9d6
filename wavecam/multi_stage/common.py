"""What several passes need: the dataset source, id lists, loaders, seeding, and the fast paths
(channels_last, pinned memory, persistent workers, autocast, same-size inference batches)."""

from __future__ import annotations

import contextlib
import functools
import logging
import random
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from wavecam import dist
from wavecam.data.voc import VOC12
from wavecam.io import WavecamError, is_complete
from wavecam.multi_stage.workspace import CAMS, skipped_images_path
from wavecam.optim import autocast_dtype

log = logging.getLogger("wavecam")


def make_source(args):
    if args.dataset == "voc":
        return VOC12(args.voc12_root, args.cache_dir, args.voc12_label_source)
    from wavecam.data.coco import COCO2014

    return COCO2014(args.mscoco_root, args.cache_dir, split_images=args.coco_split_images, crowd=args.coco_crowd)


def resolve_list(source, name: str) -> list[str]:
    """A split name or a list file. The reference's list paths (`voc12/train_aug.txt`) still
    work when the file is absent: the split of that name is derived from the dataset."""
    path = Path(name)
    if not path.is_file() and path.suffix == ".txt" and path.stem in source.SPLITS:
        log.info("%s not found: using the %s split derived from the dataset", name, path.stem)
        name = path.stem
    ids = source.split(name)
    if not ids:
        raise WavecamError(f"the id list {name} is empty")
    source.check_ids(ids)
    return ids


def seed_everything(seed: int, rank: int = 0) -> None:
    random.seed(seed + rank)
    np.random.seed(seed + rank)
    torch.manual_seed(seed + rank)


def loader_options(args, ctx: dist.Context, workers: int | None = None, reused: bool = False) -> dict:
    """DataLoader settings of the fast-path flags: pinned memory for CUDA copies, and for loaders
    iterated more than once (`reused`) workers that persist between epochs."""
    workers = args.num_workers if workers is None else workers
    return {"num_workers": workers, "pin_memory": args.pin_memory and ctx.device.type == "cuda",
            "persistent_workers": args.persistent_workers and reused and workers > 0}


class EpochSampler(Sampler):
    """Yields (epoch, index) instead of index. Persistent workers keep their own copy of the
    dataset, which a `set_epoch` in the main process never reaches; the epoch travels with each
    index instead, so every worker augments sample i of epoch e exactly as the main process would."""

    def __init__(self, sampler: DistributedSampler):
        self.sampler = sampler

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def __iter__(self):
        epoch = self.sampler.epoch
        return ((epoch, i) for i in self.sampler)

    def __len__(self) -> int:
        return len(self.sampler)


class EpochKeyed(Dataset):
    """An `Augmented` dataset indexed by EpochSampler's (epoch, index) keys."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def set_epoch(self, epoch: int, seed: int | None = None) -> None:
        self.dataset.set_epoch(epoch, seed)

    def __getitem__(self, key: tuple[int, int]):
        epoch, i = key
        self.dataset.set_epoch(epoch)
        return self.dataset[i]


def train_loader(dataset: Dataset, global_batch: int, args, ctx: dist.Context) -> DataLoader:
    """Shuffled, drop-last loader; under torchrun each rank gets global_batch / world images.

    The sampler is a DistributedSampler at every world size, so the images of a global batch are
    the same whether one process or several take them (seeded by --seed and the epoch)."""
    if global_batch % ctx.world_size:
        raise WavecamError(f"batch size {global_batch} is not divisible by the {ctx.world_size} torchrun processes")
    if len(dataset) < global_batch:
        raise WavecamError(f"{len(dataset)} training images are fewer than one batch of {global_batch}; "
                           "lower the batch size or use a larger list")
    sampler = DistributedSampler(dataset, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True, seed=args.seed,
                                 drop_last=True)
    return DataLoader(EpochKeyed(dataset), batch_size=global_batch // ctx.world_size, sampler=EpochSampler(sampler),
                      drop_last=True, **loader_options(args, ctx, reused=True))


def eval_loader(dataset: Dataset, batch_size: int, args, ctx: dist.Context) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, **loader_options(args, ctx, reused=True))


def memory_format(args) -> torch.memory_format:
    return torch.channels_last if args.channels_last else torch.contiguous_format


def place(model: torch.nn.Module, args, ctx: dist.Context) -> torch.nn.Module:
    """The model on the pass's device, in the memory format of --channels_last."""
    return model.to(ctx.device, memory_format=memory_format(args))


def to_device(images: torch.Tensor, args, ctx: dist.Context) -> torch.Tensor:
    """A batch of images (N, 3, H, W) on the device in the model's memory format."""
    return images.to(ctx.device, non_blocking=True, memory_format=memory_format(args))


def amp_dtype(args, device: torch.device) -> torch.dtype | None:
    return autocast_dtype(args.amp, device)


def autocast(args, device: torch.device):
    dtype = amp_dtype(args, device)
    return torch.autocast("cuda", dtype=dtype) if dtype is not None else contextlib.nullcontext()


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


def wrap_ddp(model: torch.nn.Module, args, ctx: dist.Context) -> torch.nn.Module:
    """The model of a training pass, placed, in DDP under torchrun; its crops have one size, so
    cuDNN may time its algorithms once for them (--cudnn_benchmark)."""
    torch.backends.cudnn.benchmark = args.cudnn_benchmark and not args.deterministic
    place(model, args, ctx)
    if not ctx.distributed:
        return model
    ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)


def pending(ids: list[str], out_dir: str, suffix: str, args, ctx: dist.Context) -> list[str]:
    """This rank's share of ids whose output is not complete yet (all of them with --force), so
    a killed pass resumes where it stopped. Temporary files a killed run left are removed first."""
    out = Path(out_dir)
    if ctx.is_main and out.is_dir():
        for tmp in out.glob(".*.tmp*"):
            tmp.unlink(missing_ok=True)
    dist.barrier(ctx)  # no rank starts writing before the clean-up is over
    ids = dist.shard(ids, ctx)
    if args.force:
        return ids
    return [i for i in ids if not is_complete(out / f"{i}{suffix}")]


def map_images(fn, ids: list[str], workers: int, desc: str, show: bool = True, threads: int | None = None) -> None:
    """Apply fn(id) to every id, over `workers` processes when there are several, each limited to
    `threads` torch threads if given (so that the processes' threads add up to the cores)."""
    from tqdm import tqdm

    if workers <= 1 or len(ids) <= 1:
        for i in tqdm(ids, desc=desc, disable=not show):
            fn(i)
        return
    import multiprocessing as mp

    # spawn: forked children of a process that has run torch/OpenMP threads can deadlock.
    with mp.get_context("spawn").Pool(min(workers, len(ids)), initializer=_limit_threads, initargs=(threads,)) as pool:
        for _ in tqdm(pool.imap_unordered(fn, ids, chunksize=4), total=len(ids), desc=desc, disable=not show):
            pass


def _limit_threads(threads: int | None) -> None:
    if threads is not None:
        torch.set_num_threads(threads)


def read_cam(args, image_id: str, produced_by: str = "--make_wavecam_pass (or --make_cam_pass)") -> dict:
    """The CAMs of one image from --cam_out_dir: ours (<id>.npz), or with --allow_pickle_cams the
    reference code's pickled <id>.npy."""
    from wavecam.io import load_cam, load_reference_cam

    path = Path(CAMS.path(args, image_id))
    if path.is_file():
        return load_cam(path)
    legacy = path.with_suffix(".npy")
    if legacy.is_file():
        if not args.allow_pickle_cams:
            raise WavecamError(f"{legacy} is a pickled CAM file of the reference code; loading it can run code. "
                               "Pass --allow_pickle_cams True if you trust it, or re-create it with make_cam")
        _warn_pickle_once()
        return load_reference_cam(legacy)
    raise WavecamError(f"no CAM for id {image_id} ({path}); run {produced_by} over a list that covers it first")


@functools.cache
def _warn_pickle_once() -> None:
    log.warning("reading pickled reference CAM files (--allow_pickle_cams): only do this for files you trust")


def skip_bad_image(args, pass_name: str, image_id: str, reason: str) -> None:
    """--skip_bad_images: log the image and list it in <work_space>/skipped_images.txt."""
    log.warning("%s: skipping %s: %s", pass_name, image_id, reason)
    with open(skipped_images_path(args.work_space), "a") as f:
        f.write(f"{pass_name}\t{image_id}\t{reason}\n")
