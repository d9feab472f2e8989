"""Proposals from images (paper §5.3): preprocessing, the proposer and its options, post-processing, backends."""
