"""The loom-side daemon: pipeline stages in threads joined by bounded queues."""
