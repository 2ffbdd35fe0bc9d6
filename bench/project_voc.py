"""Projected wall time of the full VOC multi-stage pipeline from bench_passes.py's measurements.

    python bench/project_voc.py bench.json

Assumptions, printed with the figures: the paper's defaults (10,582 train_aug images; 5 CAM, 4
WaveCAM and 3 IRN epochs at crop 512; make_wavecam, cam_to_ir_label and make_sem_seg over train_aug;
evaluation on the 1,464 train images; stage 3: deeplab-pytorch's 20,000 steps of 2 x 5 crops of 321,
make_seg and eval_seg on the 1,449 val images, the CRF left out); the data loader keeps up with the
training step (it runs in --num_workers processes beside it: the workers it needs are printed, from
the measured time per sample of one worker); training figures measured at another crop are scaled by
the pixel count to 512; per-image figures are taken at the size they were measured at (VOC images
average about 500x375); evaluation counts the confusion matrices only; start-up, file reading in the
evaluation passes, checkpoint writing and IRN's displacement-mean pass (one forward over the crops)
are left out."""

from __future__ import annotations

import argparse
import json
import sys

TRAIN_AUG, EVAL_SET, VAL = 10582, 1464, 1449
SEG_STEPS, SEG_IMAGES_PER_STEP, SEG_CROP = 20000, 10, 321
EPOCHS = {"train_cam": 5, "train_wavecam": 4, "train_irn": 3}
PAPER_CROP = 512


def project(bench: dict) -> dict:
    rows = {r["pass"]: r for r in bench["rows"]}
    crop = bench["settings"]["crop"]
    scale = (PAPER_CROP / crop) ** 2
    seconds: dict[str, float] = {}
    workers_needed = {}
    for name, epochs in EPOCHS.items():
        if name in rows:
            per_image = 1 / rows[name]["ours"]["throughput"] * scale
            seconds[name] = TRAIN_AUG * epochs * per_image
            if "loader_s" in rows[name]["ours"]:
                workers_needed[name] = rows[name]["ours"]["loader_s"] / per_image
    if "make_wavecam" in rows:
        seconds["make_wavecam"] = TRAIN_AUG * rows["make_wavecam"]["ours"]["seconds"]
    if "eval" in rows:
        per_mask = rows["eval"]["ours"]["seconds"] / bench["settings"]["eval_images"]
        seconds["eval_cam"] = seconds["eval_sem_seg"] = EVAL_SET * per_mask
    if "cam_to_ir_label" in rows:
        seconds["cam_to_ir_label"] = TRAIN_AUG * rows["cam_to_ir_label"]["ours"]["seconds"]
    if "make_sem_seg" in rows:
        ours = rows["make_sem_seg"]["ours"]
        seconds["make_sem_seg"] = TRAIN_AUG * ours.get("full", ours)["seconds"]
    if "train_seg" in rows:
        seg_scale = (SEG_CROP / bench["settings"]["seg_crop"]) ** 2
        seconds["train_seg"] = SEG_STEPS * SEG_IMAGES_PER_STEP / rows["train_seg"]["ours"]["throughput"] * seg_scale
    if "make_seg" in rows:
        seconds["make_seg"] = VAL * rows["make_seg"]["ours"]["seconds"]
    if "eval" in rows and "make_seg" in rows:
        seconds["eval_seg"] = VAL * rows["eval"]["ours"]["seconds"] / bench["settings"]["eval_images"]
    order = ("train_cam", "train_wavecam", "make_wavecam", "eval_cam", "cam_to_ir_label", "train_irn", "make_sem_seg",
             "eval_sem_seg", "train_seg", "make_seg", "eval_seg")
    total = sum(seconds.values())
    lines = [f"Projected VOC multi-stage wall time on {bench['device']} (from measurements at crop {crop}"
             f"{f', scaled x{scale:.1f} to 512' if scale != 1 else ''}; workers for cam_to_ir_label: "
             f"{bench['settings']['workers']})"]
    for name in order:
        if name in seconds:
            keep_up = f"   (loader: {workers_needed[name]:.2f} workers keep up)" if name in workers_needed else ""
            lines.append(f"  {name:<16} {seconds[name] / 3600:8.2f} h  {seconds[name] / 60:9.1f} min{keep_up}")
    lines.append(f"  {'total':<16} {total / 3600:8.2f} h  {total / 60:9.1f} min")
    missing = [n for n in order if n not in seconds]
    if missing:
        lines.append(f"  (not measured: {', '.join(missing)})")
    return {"seconds": seconds, "total_s": total, "loader_workers_needed": workers_needed, "text": "\n".join(lines),
            "assumptions": __doc__.split("\n\n")[2]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bench_json", help="written by bench/bench_passes.py --json, or gpu_check.json")
    a = p.parse_args(argv)
    data = json.loads(open(a.bench_json).read())
    print(project(data.get("passes_float32", data))["text"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
