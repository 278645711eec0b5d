"""`loomsight inspect`: the daemon path on a user's own images, no config file."""
