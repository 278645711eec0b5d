"""Frame sources behind one protocol: GenICam cameras, the synthetic loom, and replay of recorded webs."""
