"""Files: images and their headers, atomic writes and JSON reads, results files (no torch, no model)."""
