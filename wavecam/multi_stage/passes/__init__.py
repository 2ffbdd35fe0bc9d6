"""One module per pass, each exposing `run(args)`; shared by the VOC and COCO front doors.

A pass imports the library only, never another pass: what passes share (cams.write_cams for the
three CAM writers, fine_tune for ReCAM's and WaveCAM's passes) is a library module, so that each
pass reads alone and any pass can be changed without reading the others.
"""

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
    "train_seg",
    "make_seg",
    "eval_seg",
)
