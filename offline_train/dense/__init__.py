"""A dense (per-pixel) defect model: trained from scratch on the exact synthetic masks."""
