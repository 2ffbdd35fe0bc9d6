"""Networks: ResNet-50 backbone, CAM nets, the wave module and its class predictor; stage 3's segmenters."""

from wavecam.models.cam import CAMNet, WaveCAMNet, cam_weight, load_cam_weights
from wavecam.models.deeplab import SEG_NETWORKS, SegNetwork, build_seg_network, load_seg_weights
from wavecam.models.wave import ClassPredictor, WaveModeling

__all__ = [
    "SEG_NETWORKS", "CAMNet", "ClassPredictor", "SegNetwork", "WaveCAMNet", "WaveModeling", "build_seg_network",
    "cam_weight", "load_cam_weights", "load_seg_weights",
]
