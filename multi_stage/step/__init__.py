"""One module per pass, each exposing `run(args)`; shared by the VOC and COCO front doors."""
