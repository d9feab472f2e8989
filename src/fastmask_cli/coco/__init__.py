"""COCO: the ground-truth reader, the results check, RLE strings and class-agnostic average recall (paper §6)."""
