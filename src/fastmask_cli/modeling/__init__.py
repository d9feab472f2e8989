"""The network (paper §4, Fig. 2): bodies, neck, head, window geometry, config, registry and checkpoints."""
