"""Datasets (VOC 2012 + SBD, COCO 2014, the embedded synthetic set) and shared transforms."""
