"""Fuzz harness (issue 15 item 11): corrupted synthetic kernels, dump files and ranges
files through what the CLI runs; see tests/fuzz/README.md.

``python -m tests.fuzz --count 100000`` runs the big one; ``tests/fuzz/test_fuzz_slice.py``
is the CI slice.
"""
