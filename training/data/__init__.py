"""Data layer: loaders/writers for the real MIND and MS MARCO formats, and offline builders.

Entry point for the CLI: `training.data.build.build_datasets`. See training/data/README.md.
"""
