"""Flags of the multi-stage pipeline.

Flag names and defaults are those of the paper's repository (the ReCAM/IRN `run_sample.py`
family, `wavecam_*` for the WaveCAM passes); everything added here is an addition, never a
rename. The VOC and COCO front doors differ only in the dataset flag and a few defaults.

`--config FILE` (timm's pattern) reads a recipe, multi_stage/configs/*.yaml: `flag_name: value`
lines, the names as the flags' without their dashes, that become the parser's defaults, so the
command line still wins. Each value goes through its flag's own `type=` and `choices` as the
command line's would, and a key that names no flag is refused with the closest flag's name. A run
writes every flag's resolved value to workspace.settings_path, a file that `--config` reads back.
"""

from __future__ import annotations

import argparse
import difflib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from wavecam.data.coco import CROWD, SPLIT_IMAGES
from wavecam.errors import WavecamError
from wavecam.io import atomic_path
from wavecam.labels.crf import DEEPLAB_CRF
from wavecam.models.deeplab import SEG_BLOCKS, SEG_NETWORKS
from wavecam.models.resnet import resolve_arch
from wavecam.multi_stage.passes import ORDER
from wavecam.multi_stage.workspace import PATH_FLAGS, join_paths
from wavecam.ranges import Range, nonneg_float, nonneg_int, pos_float, pos_int, unit_float

# The passes that write --cam_out_dir: one of them per work space (or per --cam_out_dir).
CAM_WRITERS = ("make_cam_pass", "make_recam_pass", "make_wavecam_pass")

# ReCAM's step_coco trains, infers and evaluates on train2014 throughout (val2014 only for the
# validation loss of the training passes), and its COCO make_recam takes the CAM kernel from the
# fine-tuned classifier alone, where the VOC one multiplies in the predictor's. Its COCO runner
# adds --recam_batch_size (6) and a loss weight of 0.1; WaveCAM's flags follow them.
DATASET_DEFAULTS = {
    "voc": {},
    "coco": {
        "cam_eval_thres": 0.15,
        "recam_loss_weight": 0.1,
        "recam_batch_size": 6,
        "wavecam_loss_weight": 0.1,
        "wavecam_batch_size": 6,
        "sem_seg_bg_thres": 0.25,
        "train_list": "train",
        "seg_train_list": "train",
        "seg_num_iters": 100000,
        "infer_list": "train",
        "chainer_eval_set": "train",
        "recam_kernel": "classifier",
        "wavecam_kernel": "classifier",
    },
}


def str2bool(v: str | bool) -> bool:
    if isinstance(v, bool):
        return v
    if v.lower() in ("yes", "true", "t", "y", "1"):
        return True
    if v.lower() in ("no", "false", "f", "n", "0"):
        return False
    raise argparse.ArgumentTypeError(f"boolean value expected (True/False/yes/no/1/0), got {v!r}")


def momentum(text: str) -> float | str:
    """--sgd_momentum: 'reference' (the paper code's momentum, see wavecam.optim) or a number >= 0."""
    if text == "reference":
        return text
    try:
        return nonneg_float(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"{text!r} is neither 'reference' nor {nonneg_float}") from None


class TypedTuple(argparse.Action):
    """An option of one value per type in `types`, each converted and range-checked by its own: the
    values of one flag can differ in range (a CRF term's weight may be 0, its standard deviations not).
    The error names the offending value by its metavar."""

    def __init__(self, option_strings, dest, types: tuple[Range, ...], metavar: tuple[str, ...], **kwargs):
        super().__init__(option_strings, dest, nargs=len(types), metavar=metavar, **kwargs)
        self.types = types

    def __call__(self, parser, namespace, values, option_string=None):
        converted = []
        for convert, name, text in zip(self.types, self.metavar, values):
            try:
                converted.append(convert(text))
            except argparse.ArgumentTypeError as e:
                raise argparse.ArgumentError(self, f"{name} {e}") from None
        setattr(namespace, self.dest, tuple(converted))


# START and STOP are background thresholds; that START <= STOP relates two values, so check_conflicts
# checks it.
SWEEP = (unit_float, unit_float, pos_float)


def build_parser(dataset: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=f"WaveCAM multi-stage weakly-supervised segmentation on {dataset.upper()}.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    a = p.add_argument
    a("--config", action="append", metavar="FILE",
      help="a recipe (multi_stage/configs/*.yaml: flag_name: value lines) whose values become the defaults; "
           "flags given on the command line win; given twice, the later file wins where both set a flag")
    # Environment
    a("--num_workers", type=nonneg_int, default=min(12, os.cpu_count() or 1))
    if dataset == "voc":
        a("--voc12_root", default="../VOCdevkit/VOC2012/", help="VOC 2012 root holding JPEGImages/ etc.")
        a("--voc12_label_source", choices=("xml", "mask"), default="xml",
          help="image labels from Annotations/*.xml (the reference's cls_labels.npy) or from the masks")
    else:
        a("--mscoco_root", default="../mscoco/", help="COCO 2014 root holding train2014/, val2014/, annotations/")
        a("--coco_split_images", choices=SPLIT_IMAGES, default="all",
          help="images of the train and val splits: all of the annotation file's (ReCAM's), or annotated: "
               "those with a non-crowd object")
        a("--coco_crowd", choices=CROWD, default="background",
          help="crowd regions of the rendered ground truth: background (ReCAM's) or ignore (255, not scored)")
    a("--cache_dir", default=None, help="where derived labels/masks are cached (default ~/.cache/wavecam)")
    a("--device", default="auto", help="auto, cpu or cuda (under torchrun: the rank's GPU)")
    a("--amp", type=str2bool, default=False, help="autocast (bf16 where supported, else fp16) on CUDA")
    a("--seed", type=int, default=0)
    a("--pretrained", default="imagenet",
      help="ResNet-50 init: 'imagenet' (torchvision IMAGENET1K_V1), a path to its state dict, or 'none'")
    # Dataset: split names are derived from the dataset; list files are accepted too.
    a("--train_list", default="train_aug")
    a("--val_list", default="val")
    a("--infer_list", default="train_aug",
      help="train_aug to train a fully supervised model, train or val to check label quality quickly")
    a("--chainer_eval_set", default="train")
    # Class Activation Map
    a("--cam_network", default="net.resnet50_cam",
      help="backbone: net.resnet50_cam (= resnet50, the paper's), resnet18, resnet34 or resnet101")
    a("--feature_dim", type=pos_int, default=2048,
      help="accepted for the reference's command lines and ignored: the backbone (--cam_network) decides the "
           "feature width")
    a("--cam_crop_size", type=pos_int, default=512)
    a("--cam_resize_long", type=pos_int, nargs=2, default=(320, 640), metavar=("MIN", "MAX"))
    a("--cam_batch_size", type=pos_int, default=16, help="global batch size (split across torchrun ranks)")
    a("--cam_num_epoches", type=pos_int, default=5)
    a("--cam_learning_rate", type=pos_float, default=0.1)
    a("--cam_weight_decay", type=nonneg_float, default=1e-4)
    a("--sgd_momentum", type=momentum, default="reference",
      help="'reference' reproduces the paper code's SGD (momentum = weight decay); or a number like 0.9")
    a("--cam_eval_thres", type=unit_float, default=0.21)
    a("--cam_eval_sweep", action=TypedTuple, types=SWEEP, default=None, metavar=("START", "STOP", "STEP"),
      help="also evaluate background thresholds START..STOP by STEP and report the best")
    a("--cam_scales", type=pos_float, nargs="+", default=(1.0, 0.5, 1.5, 2.0), help="multi-scale inference")
    a("--cam_resample", choices=("pil", "torch"), default="pil",
      help="make_cam's scales: PIL bicubic on the uint8 image in the loader (the reference's), or torch "
           "bilinear on the normalised tensor on the pass's device (no loader work)")
    # ReCAM (its run_sample.py; VOC's train_recam takes --cam_batch_size, COCO's --recam_batch_size)
    a("--recam_num_epoches", type=pos_int, default=4)
    a("--recam_learning_rate", type=pos_float, default=0.0005)
    a("--recam_loss_weight", type=nonneg_float, default=1.0)
    a("--recam_batch_size", type=pos_int, default=None, help="default: --cam_batch_size")
    a("--recam_weight_dir", default=PATH_FLAGS["recam_weight_dir"])
    a("--recam_kernel", choices=("product", "classifier"), default="product",
      help="make_recam's CAM kernel, as --wavecam_kernel")
    # WaveCAM
    a("--wavecam_num_epoches", type=pos_int, default=4)
    a("--wavecam_learning_rate", type=pos_float, default=0.0005)
    a("--wavecam_loss_weight", type=nonneg_float, default=1.0)
    a("--wavecam_batch_size", type=pos_int, default=None, help="default: --cam_batch_size")
    a("--wavecam_weight_dir", default=PATH_FLAGS["wavecam_weight_dir"])
    a("--wavecam_kernel", choices=("product", "classifier"), default="product",
      help="make_wavecam's CAM kernel: the predictor's weight times the fine-tuned classifier's (ReCAM's "
           "VOC make_recam), or the fine-tuned classifier's alone (its COCO one)")
    a("--wavecam_wave", type=str2bool, default=True,
      help="the wave module in train_wavecam; False fuses nothing into the class features, which is "
           "ReCAM's computation under the wavecam_* flags and file names (ablation)")
    # Mining inter-pixel relations
    a("--conf_fg_thres", type=unit_float, default=0.35)
    a("--conf_bg_thres", type=unit_float, default=0.1)
    # IRN
    a("--irn_network", default="net.resnet50_irn", help="IRN backbone: net.resnet50_irn (= resnet50), or as above")
    a("--irn_crop_size", type=pos_int, default=512)
    a("--irn_rescale", type=pos_float, nargs=2, default=(0.5, 1.5), metavar=("MIN", "MAX"))
    a("--irn_batch_size", type=pos_int, default=32)
    a("--irn_path_radius", type=pos_int, default=10, help="pair radius of IRN's training labels, at stride 4")
    a("--irn_num_epoches", type=pos_int, default=3)
    a("--irn_learning_rate", type=pos_float, default=0.1)
    a("--irn_weight_decay", type=nonneg_float, default=1e-4)
    a("--irn_pad_to_crop", type=str2bool, default=False,
      help="make_sem_seg zero-pads each image to --irn_crop_size as IRN does (ReCAM, hence WaveCAM, does not)")
    # Random walk
    a("--beta", type=pos_float, default=10)
    a("--exp_times", type=nonneg_int, default=8, help="the random walk takes 2^exp_times steps")
    a("--sem_seg_bg_thres", type=unit_float, default=0.28)
    a("--sem_seg_eval_sweep", action=TypedTuple, types=SWEEP, default=None, metavar=("START", "STOP", "STEP"),
      help="make_sem_seg also keeps each image's walked scores (--sem_seg_score_dir) and eval_sem_seg scores "
           "the pseudo labels at every background threshold of the sweep, as --cam_eval_sweep does the seeds")
    # Stage 3: a fully supervised segmenter trained on the pseudo labels, with deeplab-pytorch's settings
    # (configs/voc12.yaml; COCO: configs/coco.yaml's schedule)
    a("--seg_network", choices=SEG_NETWORKS, default="deeplabv2_resnet101_msc",
      help="DeepLab-v2 ResNet-101 with multi-scale inputs (the paper's), or torchvision's DeepLab-v3")
    a("--seg_n_blocks", type=pos_int, nargs=4, default=(3, 4, 23, 3), metavar=("L1", "L2", "L3", "L4"),
      help="DeepLab-v2's blocks per stage (deeplab-pytorch's N_BLOCKS; ResNet-101's by default)")
    a("--seg_block", choices=SEG_BLOCKS, default="bottleneck",
      help="DeepLab-v2's ResNet blocks: bottleneck (ResNet-50/101, the paper's) or basic (ResNet-18/34, "
           "with --seg_n_blocks 2 2 2 2 / 3 4 6 3: the CPU demo's, from a torchvision ResNet-18/34)")
    a("--seg_pretrained", default="imagenet",
      help="initial weights: 'imagenet' (torchvision's ResNet-101), 'none', or a file: a deeplab-pytorch "
           "checkpoint (caffe, BGR), a torchvision-layout ResNet-101 or one of ours")
    a("--seg_label_dir", default=None,
      help="the training labels: default the work space's --sem_seg_out_dir (the pseudo labels); 'gt' "
           "for the ground truth (the fully supervised upper bound), or a folder of <id>.png")
    a("--seg_train_list", default="train_aug")
    a("--seg_eval_set", default="val")
    a("--seg_batch_size", type=pos_int, default=5, help="images per forward (deeplab-pytorch's BATCH_SIZE.TRAIN)")
    a("--seg_iter_size", type=pos_int, default=2,
      help="forwards accumulated per optimiser step (ITER_SIZE): the global batch is batch size x iter size, "
           "split over torchrun processes")
    a("--seg_crop_size", type=pos_int, default=321)
    a("--seg_scales", type=pos_float, nargs="+", default=(0.5, 0.75, 1.0, 1.25, 1.5), help="random rescaling")
    a("--seg_msc_scales", type=pos_float, nargs="*", default=(0.5, 0.75),
      help="DeepLab-v2's extra input scales (max-fused with the full one, a loss on each)")
    a("--seg_num_iters", type=pos_int, default=20000, help="optimiser steps (ITER_MAX)")
    a("--seg_learning_rate", type=pos_float, default=2.5e-4, help="x10 for the head's weights, x20 its biases")
    a("--seg_momentum", type=nonneg_float, default=0.9)
    a("--seg_weight_decay", type=nonneg_float, default=5e-4)
    a("--seg_poly_power", type=nonneg_float, default=0.9)
    a("--seg_lr_decay", type=pos_int, default=10, help="the poly rate is updated every N steps (LR_DECAY)")
    a("--seg_warmup_iters", type=nonneg_int, default=0,
      help="ramp the rate up linearly over the first N steps (0: none, the reference's); lets short schedules "
           "use higher rates without the head blowing up in its first steps (the demo's)")
    a("--seg_save_iters", type=pos_int, default=1000, help="the train state is saved every N steps (for resume)")
    a("--seg_log_iters", type=pos_int, default=100, help="log line and TensorBoard scalars every N steps")
    a("--seg_crf", type=str2bool, default=True,
      help="make_seg also writes the dense-CRF predictions; eval_seg reports both, the CRF ones first")
    # 0 is allowed: the CRF then hands back the network's probabilities, its starting point.
    a("--seg_crf_iters", type=nonneg_int, default=DEEPLAB_CRF["t"], help="the CRF's mean-field iterations")
    # A weight of 0 switches its term off; a standard deviation divides the features, so it cannot be 0.
    a("--seg_crf_pos", action=TypedTuple, types=(nonneg_float, pos_float),
      default=(DEEPLAB_CRF["pos_w"], DEEPLAB_CRF["pos_xy_std"]),
      metavar=("W", "XY_STD"), help="the CRF's Gaussian (smoothness) term")
    a("--seg_crf_bi", action=TypedTuple, types=(nonneg_float, pos_float, pos_float),
      default=(DEEPLAB_CRF["bi_w"], DEEPLAB_CRF["bi_xy_std"], DEEPLAB_CRF["bi_rgb_std"]),
      metavar=("W", "XY_STD", "RGB_STD"), help="the CRF's bilateral (appearance) term")
    a("--seg_crf_image", choices=("reference", "raw"), default="reference",
      help="the image the CRF compares colours in: deeplab-pytorch's (its mean-subtracted BGR cast to uint8, "
           "values below the mean wrapping around) or the image itself")
    if dataset == "voc":
        a("--voc12_test_root", default=None,
          help="VOC 2012 test images (JPEGImages/, ImageSets/Segmentation/test.txt): make_seg writes their "
               "predictions in the evaluation server's layout, results/VOC2012/Segmentation/comp6_test_cls/")
    # Output paths (joined to --work_space unless absolute)
    a("--work_space", default="result_default")
    a("--log_name", default=PATH_FLAGS["log_name"])
    a("--cam_weights_name", default=PATH_FLAGS["cam_weights_name"])
    a("--irn_weights_name", default=PATH_FLAGS["irn_weights_name"])
    a("--cam_out_dir", default=PATH_FLAGS["cam_out_dir"])
    a("--ir_label_out_dir", default=PATH_FLAGS["ir_label_out_dir"])
    a("--sem_seg_out_dir", default=PATH_FLAGS["sem_seg_out_dir"])
    a("--sem_seg_score_dir", default=PATH_FLAGS["sem_seg_score_dir"],
      help="make_sem_seg's walked scores, with --sem_seg_eval_sweep")
    a("--seg_weights_name", default=PATH_FLAGS["seg_weights_name"],
      help="the stage-3 segmenter's weights, written by train_seg and read by make_seg, whatever its network "
           "and depth (the default is the reference's name)")
    a("--seg_out_dir", default=PATH_FLAGS["seg_out_dir"], help="make_seg's predictions: <dir>/<set>[_crf]/<id>.png")
    a("--force", type=str2bool, default=False, help="redo outputs that already exist")
    a("--resume", type=str2bool, default=True,
      help="continue an interrupted training pass from <work_space>/resume/ (False: start it over)")
    a("--skip_bad_images", type=str2bool, default=False,
      help="image-wise passes skip unreadable images, listing them in <work_space>/skipped_images.txt")
    a("--allow_pickle_cams", type=str2bool, default=False,
      help="read the reference code's pickled cam_mask/<id>.npy files (can run code: trusted files only)")
    a("--deterministic", type=str2bool, default=False,
      help="deterministic kernels on CUDA (slower); CPU runs with the same --seed are bit-identical anyway")
    # Fast paths: each changes results by floating-point noise at most (--amp, off by default, by more).
    a("--channels_last", type=str2bool, default=True,
      help="NHWC memory format for the ResNets and their inputs (faster with cuDNN and oneDNN)")
    a("--cudnn_benchmark", type=str2bool, default=True,
      help="training passes let cuDNN time its convolution algorithms for their fixed crop (off under "
           "--deterministic); image-wise passes never do: every image size and scale would be timed anew")
    a("--pin_memory", type=str2bool, default=True, help="page-locked loader batches for faster copies to CUDA")
    a("--persistent_workers", type=str2bool, default=True,
      help="training loaders keep their --num_workers processes between epochs")
    a("--cam_infer_batch", type=nonneg_int, default=0,
      help="images of one size per forward in make_cam/make_recam/make_wavecam; 0: 8 on CUDA, 1 on CPU")
    # Passes
    for name in ORDER:
        a(f"--{name}_pass", type=str2bool, default=False)
    p.set_defaults(dataset=dataset, **DATASET_DEFAULTS[dataset])
    return p


def check_conflicts(args: argparse.Namespace) -> None:
    """Flag combinations that cannot both hold, refused before any pass runs. Each value's own range
    is its flag's `type=` (build_parser); the checks here relate several values."""
    writers = [f"--{flag}" for flag in CAM_WRITERS if getattr(args, flag)]
    if len(writers) > 1:
        names = f"{', '.join(writers[:-1])} and {writers[-1]}"
        raise WavecamError(f"{names} {'both' if len(writers) == 2 else 'all'} write --cam_out_dir "
                           f"({args.cam_out_dir}): run them in separate work spaces, or one after the other "
                           "with different --cam_out_dir")
    if args.train_irn_pass and args.irn_crop_size < 8 * args.irn_path_radius:
        raise WavecamError(f"--irn_crop_size {args.irn_crop_size} is too small for --irn_path_radius "
                           f"{args.irn_path_radius}: the crop must be at least {8 * args.irn_path_radius} pixels")
    # DeepLab-v2 resizes its input by each MSC scale, flooring the size: a crop must keep a pixel.
    msc = args.seg_network == "deeplabv2_resnet101_msc" and args.seg_msc_scales
    if args.train_seg_pass and msc and int(args.seg_crop_size * min(args.seg_msc_scales)) < 1:
        raise WavecamError(f"--seg_crop_size {args.seg_crop_size} is too small for --seg_msc_scales "
                           f"{min(args.seg_msc_scales):g}: the scaled crop would have no pixel")
    for flag, (low, high) in (("--cam_resize_long", args.cam_resize_long), ("--irn_rescale", args.irn_rescale)):
        if low > high:
            raise WavecamError(f"{flag} {low:g} {high:g}: MIN is above MAX; give the smaller value first")
    for flag, sweep in (("--cam_eval_sweep", args.cam_eval_sweep), ("--sem_seg_eval_sweep", args.sem_seg_eval_sweep)):
        if sweep and sweep[0] > sweep[1]:
            raise WavecamError(f"{flag} {sweep[0]:g} {sweep[1]:g} {sweep[2]:g}: START is above STOP; "
                               "give the lower threshold first")


@dataclass(frozen=True)
class FineTune:
    """The settings of one fine-tuning method's passes (train_<name>, make_<name>), read from its flags
    once in `finalize`: the passes read these fields, never a flag name built from the method's, so
    grep finds every reader of a flag."""

    name: str  # the prefix of its flags and files: "recam" or "wavecam"
    num_epoches: int
    learning_rate: float
    loss_weight: float
    batch_size: int
    weight_dir: str  # joined to the work space
    kernel: str  # make_<name>'s CAM kernel: "product" or "classifier"
    wave: bool  # whether train_<name> builds the wave module (never for ReCAM)


def finalize(args: argparse.Namespace) -> argparse.Namespace:
    join_paths(args)
    for flag in ("recam_batch_size", "wavecam_batch_size"):
        if getattr(args, flag) is None:
            setattr(args, flag, args.cam_batch_size)
    args.pretrained = None if str(args.pretrained).lower() == "none" else args.pretrained
    args.cam_scales = tuple(args.cam_scales)
    args.cam_network, args.irn_network = resolve_arch(args.cam_network), resolve_arch(args.irn_network)
    args.fine_tune = {
        "recam": FineTune(name="recam", num_epoches=args.recam_num_epoches, learning_rate=args.recam_learning_rate,
                          loss_weight=args.recam_loss_weight, batch_size=args.recam_batch_size,
                          weight_dir=args.recam_weight_dir, kernel=args.recam_kernel, wave=False),
        "wavecam": FineTune(name="wavecam", num_epoches=args.wavecam_num_epoches,
                            learning_rate=args.wavecam_learning_rate, loss_weight=args.wavecam_loss_weight,
                            batch_size=args.wavecam_batch_size, weight_dir=args.wavecam_weight_dir,
                            kernel=args.wavecam_kernel, wave=args.wavecam_wave),
    }
    check_conflicts(args)
    return args


def parse_args(dataset: str, argv: list[str] | None = None) -> argparse.Namespace:
    """The flags of `argv` over the values of its --config recipes (in order: a later file wins) over
    the parser's defaults. Not finalized: paths are still relative to the work space."""
    parser = build_parser(dataset)
    args = parser.parse_args(argv)
    if args.config:
        for path in args.config:
            parser.set_defaults(**read_recipe(parser, path))
        # Parsed again so that the command line's flags win over the recipes' new defaults.
        args = parser.parse_args(argv)
    return args


def recipe_flags(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """The flags a recipe may set, by name: all but --help and --config (a recipe names no other)."""
    # argparse keeps no public list of a parser's actions.
    return {action.dest: action for action in parser._actions if action.dest not in ("help", "config")}


def read_recipe(parser: argparse.ArgumentParser, path: str | os.PathLike) -> dict[str, Any]:
    """The values the recipe at `path` gives, by flag name, each as the command line would give it. A key
    that names no flag is refused, with the closest flag's name: a typo must not silently train with the
    default. A value is refused by its flag's own range, before any work starts."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        raise WavecamError(f"--config {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise WavecamError(f"--config {path}: cannot read it ({getattr(e, 'strerror', None) or e})") from None
    try:
        recipe = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise WavecamError(f"--config {path}: not valid YAML ({yaml_problem(e)})") from None
    if recipe is None:  # a file of comments only
        return {}
    if not isinstance(recipe, dict):
        raise WavecamError(f"--config {path}: expected `flag_name: value` lines, got a {type(recipe).__name__}")
    flags = recipe_flags(parser)
    values = {}
    for key, value in recipe.items():
        action = flags.get(str(key))
        if action is None:
            close = difflib.get_close_matches(str(key), flags, n=1)
            hint = f"did you mean {close[0]!r}?" if close else "--help lists the flags"
            raise WavecamError(f"{path}: unknown flag {key!r} ({hint})")
        try:
            values[action.dest] = recipe_value(action, value)
        except argparse.ArgumentTypeError as e:
            raise WavecamError(f"{path}: {key}: {e}") from None
    return values


def yaml_problem(e: yaml.YAMLError) -> str:
    """A YAML error in one line: what, and where in the file (PyYAML's own message spans several lines)."""
    mark = getattr(e, "problem_mark", None)
    problem = getattr(e, "problem", None) or str(e).splitlines()[0]
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}" if mark else problem


def recipe_value(action: argparse.Action, value: Any) -> Any:
    """A recipe's `value` for the flag of `action`, converted as the command line converts its text: each
    item in its command-line form through the flag's `type=` (whose ranges raise ArgumentTypeError) and
    `choices`; a list for a flag of several values. null only where the flag's default is None."""
    if value is None:
        if action.default is None:
            return None
        raise argparse.ArgumentTypeError("has no value: give one, or leave the key out for the default")
    if action.nargs is None:
        return recipe_item(action, action.type, value)
    if not isinstance(value, list):
        raise argparse.ArgumentTypeError(f"expects a list of values, got {value!r}")
    if isinstance(action.nargs, int) and len(value) != action.nargs:
        names = f" ({' '.join(action.metavar)})" if isinstance(action.metavar, tuple) else ""
        raise argparse.ArgumentTypeError(f"expects {action.nargs} values{names}, got {len(value)}")
    if action.nargs == "+" and not value:
        raise argparse.ArgumentTypeError("expects at least one value")
    if isinstance(action, TypedTuple):
        items = []
        for convert, name, item in zip(action.types, action.metavar, value):
            try:
                items.append(recipe_item(action, convert, item))
            except argparse.ArgumentTypeError as e:
                raise argparse.ArgumentTypeError(f"{name} {e}") from None
        return tuple(items)
    return [recipe_item(action, action.type, item) for item in value]


def recipe_item(action: argparse.Action, convert, value: Any) -> Any:
    """One value of a recipe through `convert` (the flag's type, or one position's) and the flag's choices."""
    if isinstance(value, list | dict):
        raise argparse.ArgumentTypeError(f"expects a single value, got {value!r}")
    # YAML reads yes/no/on/off as booleans: a flag that takes text would get 'True' for 'yes'.
    if convert is None and isinstance(value, bool):
        raise argparse.ArgumentTypeError(f"expects text, got the boolean {value} (quote the value)")
    text = str(value)
    try:
        converted = convert(text) if convert is not None else text
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"{text!r} is not a valid {getattr(convert, '__name__', convert)}") from None
    if action.choices is not None and converted not in action.choices:
        raise argparse.ArgumentTypeError(f"{converted!r} is not one of {', '.join(map(str, action.choices))}")
    return converted


def resolved_settings(args: argparse.Namespace) -> dict[str, Any]:
    """Every flag's value as parsed (recipes and command line resolved; before `finalize` joins the
    paths to the work space), in a recipe's form: --config on a file of them gives the same flags."""
    return {key: list(value) if isinstance(value, tuple) else value
            for key, value in vars(args).items() if key not in ("config", "dataset")}


def save_settings(path: str | os.PathLike, dataset: str, settings: dict[str, Any], configs: list[str] | None) -> None:
    """Write `settings` (resolved_settings) as a recipe, atomically."""
    sources = f"--config {' '.join(configs)} and the command line" if configs else "the command line"
    header = (f"# Every flag of a run of run_wavecam_{dataset}.py, from {sources}.\n"
              f"# `run_wavecam_{dataset}.py --config {path}` runs the same settings again.\n")
    with atomic_path(path) as tmp:
        tmp.write_text(header + yaml.safe_dump(settings, sort_keys=False, default_flow_style=None))
