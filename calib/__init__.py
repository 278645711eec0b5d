"""Camera calibration: mm per pixel across, mm per line along, flat-field references."""
