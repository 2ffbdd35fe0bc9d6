"""Where every file of a multi-stage work space lives, in one module.

The layout under --work_space, with the reference's names (a path flag given an absolute path
keeps it, as the reference's do):

    sample_train_eval.log          --log_name, ".log" added: the run's log
    res50_cam.pth                  --cam_weights_name: train_cam
    recam_weight/, wavecam_weight/ --recam_weight_dir, --wavecam_weight_dir: train_recam, train_wavecam
                                   write res50_<method>_<epoch>.pth and <method>_predictor_<epoch>.pth
    cam_mask/<id>.npz              --cam_out_dir: make_cam, make_recam or make_wavecam
    ir_label/<id>.png              --ir_label_out_dir: cam_to_ir_label
    res50_irn.pth                  --irn_weights_name: train_irn
    sem_seg/<id>.png               --sem_seg_out_dir: make_sem_seg
    res101_seg.pth                 --seg_weights_name: train_seg (stage 3)
    seg_pred/<set>[_crf]/<id>.png  --seg_out_dir: make_seg's predictions, without and with the CRF
    results/VOC2012/Segmentation/comp6_test_cls/<id>.png
                                   make_seg on --voc12_test_root: the VOC server's layout
    results/<pass>.json            eval_cam, eval_sem_seg, eval_seg
    results/settings.yaml          every flag of the latest run, recipes and command line resolved (a
                                   recipe: --config reads it); the log keeps each run's arguments
    resume/<pass>.pth              a training pass's state after each epoch, until the pass ends
    skipped_images.txt             the images --skip_bad_images skipped, pass by pass
    tb/<pass>/                     TensorBoard scalars of a training pass
    <folder>/.made_by.json         what made an image-wise output folder, <weights>.made_by.json what
                                   trained a weights file (engine.provenance)

Paths named by a flag are strings, as the flags are; the files of fixed names are Paths. The weights
files keep the reference's default names whatever the network: res101_seg.pth is the stage-3
segmenter's file at any depth (a ResNet-18 DeepLab with --seg_block basic), as res50_cam.pth and
res50_irn.pth are with --cam_network / --irn_network resnet18.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

# The flags that name a path in the work space, with the reference's defaults.
PATH_FLAGS = {
    "log_name": "sample_train_eval",
    "cam_weights_name": "res50_cam.pth",
    "irn_weights_name": "res50_irn.pth",
    "cam_out_dir": "cam_mask",
    "ir_label_out_dir": "ir_label",
    "sem_seg_out_dir": "sem_seg",
    "sem_seg_score_dir": "sem_seg_score",
    "recam_weight_dir": "recam_weight",
    "wavecam_weight_dir": "wavecam_weight",
    "seg_weights_name": "res101_seg.pth",
    "seg_out_dir": "seg_pred",
}


def in_work_space(work_space: str | os.PathLike, flag: str, value: str) -> str:
    """The path that `value` of the path flag `flag` names: joined to the work space unless absolute
    (os.path.join keeps an absolute one), and the log with the ".log" the reference adds."""
    path = os.path.join(work_space, value)
    return path + ".log" if flag == "log_name" else path


def join_paths(args) -> None:
    """Replace each path flag of the parsed `args` by the path it names."""
    for flag in PATH_FLAGS:
        setattr(args, flag, in_work_space(args.work_space, flag, getattr(args, flag)))


def default_path(work_space: str | os.PathLike, flag: str) -> str:
    """The path of `flag` in a work space run with its default: another run's res50_cam.pth, say."""
    return in_work_space(work_space, flag, PATH_FLAGS[flag])


@dataclass(frozen=True)
class ImageFiles:
    """One file per image, <folder>/<id><suffix>, in the folder that a path flag names."""

    flag: str
    suffix: str

    def folder(self, args) -> str:
        return getattr(args, self.flag)

    def path(self, args, image_id: str) -> str:
        return os.path.join(self.folder(args), f"{image_id}{self.suffix}")


CAMS = ImageFiles("cam_out_dir", ".npz")
IR_LABELS = ImageFiles("ir_label_out_dir", ".png")
SEM_SEG = ImageFiles("sem_seg_out_dir", ".png")
# With --sem_seg_eval_sweep: make_sem_seg's walked scores, npz with "keys" (K,) int64, "rw" (K, h, w)
# float32 at stride 4 and "size" (H, W), from which eval_sem_seg labels every threshold of the sweep.
SEM_SEG_SCORES = ImageFiles("sem_seg_score_dir", ".npz")


def fine_tune_checkpoints(args, method: str, epoch: int | None = None) -> tuple[str, str]:
    """(net, predictor) files that train_<method> ("recam" or "wavecam") writes after `epoch`, by
    default after its last (what make_<method> reads); the method's settings are `args.fine_tune`'s
    (flags.finalize)."""
    tuning = args.fine_tune[method]
    ep = epoch or tuning.num_epoches
    return (os.path.join(tuning.weight_dir, f"res50_{method}_{ep}.pth"),
            os.path.join(tuning.weight_dir, f"{method}_predictor_{ep}.pth"))


def results_path(work_space: str | os.PathLike, name: str) -> Path:
    """What the evaluation pass `name` found, with the settings that produced it."""
    return Path(work_space) / "results" / f"{name}.json"


def settings_path(work_space: str | os.PathLike) -> Path:
    """Every flag of the work space's latest run, as a recipe (flags.save_settings)."""
    return Path(work_space) / "results" / "settings.yaml"


def resume_path(work_space: str | os.PathLike, name: str) -> Path:
    """The state of the training pass `name` after its last finished epoch."""
    return Path(work_space) / "resume" / f"{name}.pth"


def skipped_images_path(work_space: str | os.PathLike) -> Path:
    return Path(work_space) / "skipped_images.txt"


def seg_labels(args) -> str | None:
    """The folder of stage 3's training labels: --seg_label_dir, by default the pseudo labels of
    --sem_seg_out_dir; None for 'gt', the dataset's ground truth."""
    if args.seg_label_dir is None:
        return args.sem_seg_out_dir
    return None if args.seg_label_dir == "gt" else args.seg_label_dir


def seg_predictions(args, eval_set: str, crf: bool) -> str:
    """make_seg's predictions for `eval_set`, with or without the dense CRF."""
    return os.path.join(args.seg_out_dir, eval_set + ("_crf" if crf else ""))


def voc_server_dir(work_space: str | os.PathLike) -> Path:
    """VOC 2012 test predictions in the layout the evaluation server accepts (zip `results/`)."""
    return Path(work_space) / "results" / "VOC2012" / "Segmentation" / "comp6_test_cls"


def tensorboard_dir(work_space: str | os.PathLike, name: str) -> Path:
    """The TensorBoard scalars of the training pass `name`."""
    return Path(work_space) / "tb" / name
