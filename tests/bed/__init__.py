"""mmrwatch real-kernel test bed.

A small library (used by the pytest fixtures and by the README demo) that provisions real
kernels, boots them under QEMU + OVMF, runs commands inside the guest, takes dumps and real
kdumps, and pokes guest memory.  Big artefacts live under ``~/.cache/mmrwatch`` keyed by
exact version; nothing here is committed but the recipes.
"""
