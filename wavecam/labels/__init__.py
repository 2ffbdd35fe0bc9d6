"""From score maps to label maps: CAM seeds and the one background threshold (cam), IRN's labels
and random walk (randomwalk), the dense CRF (crf), AFA's pixel-adaptive refinement (par) and online
pseudo and affinity labels (afa). The networks that make the maps are in wavecam.models, the passes
that run them in wavecam.multi_stage and wavecam.end_to_end."""
