"""Offline half: defect synthesis, datasets, RT-DETR training and evaluation (needs the train extra)."""
