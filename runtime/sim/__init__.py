"""Synthetic loom: procedural woven fabric with defects and exact ground truth (numpy + OpenCV only)."""
