"""Patchers that put the fused kernels into other trainers (ultralytics); each imports its trainer lazily."""
