"""Networks: ResNet-50 backbone, CAM nets, the wave module and its class predictor."""

from wavecam.models.cam import CAMNet, WaveCAMNet, cam_weight, load_cam_weights
from wavecam.models.wave import ClassPredictor, WaveModeling

__all__ = ["CAMNet", "ClassPredictor", "WaveCAMNet", "WaveModeling", "cam_weight", "load_cam_weights"]
