"""Job entrypoints (Ray layer) and their YAML configs in pipelines/configs/."""
