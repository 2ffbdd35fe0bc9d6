"""One module per pass, each exposing `run(args)`; shared by the VOC and COCO front doors."""

# The passes in the order a full run executes them; --<pass>_pass switches each on.
ORDER = (
    "train_cam",
    "train_recam",
    "train_wavecam",
    "make_cam",
    "make_recam",
    "make_wavecam",
    "eval_cam",
    "cam_to_ir_label",
    "train_irn",
    "make_sem_seg",
    "eval_sem_seg",
)
