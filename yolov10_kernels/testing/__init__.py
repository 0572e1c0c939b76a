"""Test-time instruments for the kernels (no effect unless a test suite installs them)."""
