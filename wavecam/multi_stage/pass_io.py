"""A pass's inputs and outputs, for every pass: the dataset source and loader settings it reads
with, the CAM files it reads, the images it has still to write (its claimed output folder), the
identities that make up an output's maker, and the list of images it skipped. The process, devices,
precision and the training loop are the engine's (wavecam.engine)."""

from __future__ import annotations

import functools
import hashlib
import logging
from pathlib import Path

from wavecam.data.datasets import open_source
from wavecam.data.synthetic import synthetic_identity
from wavecam.engine.provenance import claim_folder, file_identity
from wavecam.engine.runtime import Context, barrier, shard
from wavecam.errors import BadFileError, WavecamError
from wavecam.io import is_complete
from wavecam.multi_stage.workspace import CAMS, skipped_images_path

log = logging.getLogger("wavecam")


def make_source(args):
    """The dataset of --dataset at --voc12_root or --mscoco_root, with its label options."""
    if args.dataset == "voc":
        return open_source("voc", args.voc12_root, args.cache_dir, root_option="--voc12_root",
                           voc_label_source=args.voc12_label_source)
    return open_source("coco", args.mscoco_root, args.cache_dir, root_option="--mscoco_root",
                       coco_split_images=args.coco_split_images, coco_crowd=args.coco_crowd)


def loader_options(args, ctx: Context, workers: int | None = None, reused: bool = False) -> dict:
    """DataLoader settings of the fast-path flags: pinned memory for CUDA copies, and for loaders
    iterated more than once (`reused`) workers that persist between iterations."""
    workers = args.num_workers if workers is None else workers
    return {"num_workers": workers, "pin_memory": args.pin_memory and ctx.device.type == "cuda",
            "persistent_workers": args.persistent_workers and reused and workers > 0}


def claim_outputs(ids: list[str], out_dir: str, suffix: str, maker: dict, args, ctx: Context, what: str) -> list[str]:
    """This rank's share of ids whose output in `out_dir` is still to write, once the folder is claimed
    for `maker` (engine.provenance.claim_folder: the files of another maker are removed, so they are
    redone). With --force all of them. Temporary files a killed run left are removed first."""
    out = Path(out_dir)
    if ctx.is_main:
        if out.is_dir():
            for tmp in out.glob(".*.tmp*"):
                tmp.unlink(missing_ok=True)
        claim_folder(out, suffix, maker, args.force, what)
    barrier(ctx)  # no rank looks at the folder before the clean-up is over
    ids = shard(ids, ctx)
    if args.force:
        return ids
    return [i for i in ids if not is_complete(out / f"{i}{suffix}")]


def pick(args, *flags: str) -> dict:
    """The named flags' values, for a maker (engine.provenance): the settings that change an output."""
    return {flag: getattr(args, flag) for flag in flags}


def data_identity(args) -> dict:
    """The dataset an output is made from: its root, the options that change its labels and, for the
    embedded synthetic set, the settings it was drawn with."""
    if args.dataset == "voc":
        identity = {"voc12_root": str(Path(args.voc12_root).resolve()), "voc12_label_source": args.voc12_label_source}
    else:
        identity = {"mscoco_root": str(Path(args.mscoco_root).resolve()),
                    **pick(args, "coco_split_images", "coco_crowd")}
    drawn = synthetic_identity(args.voc12_root if args.dataset == "voc" else args.mscoco_root)
    return identity if drawn is None else {**identity, "synthetic": drawn}


def ids_identity(ids: list[str]) -> str:
    """A hash of an id list: a training run on other images is another run."""
    return hashlib.sha1("\n".join(ids).encode()).hexdigest()


def weights_identity(value: str | None) -> str | None:
    """--pretrained-style values: 'imagenet' or None as they are, a file by its content."""
    return file_identity(value) if value and Path(value).is_file() else value


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


def load_image_or_skip(source, args, pass_name: str, image_id: str):
    """The image, or None where it is unreadable and --skip_bad_images lists it instead of failing."""
    try:
        return source.load_image(image_id)
    except BadFileError as e:
        if not args.skip_bad_images:
            raise
        skip_bad_image(args, pass_name, image_id, str(e))
        return None
