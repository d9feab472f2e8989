"""Runs over folders of images: the image plan and shards, the partial log, readers, torchrun, merge, bench."""
