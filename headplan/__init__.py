"""headplan command-line interface: ``profile``, ``plan``, ``run``, ``report``.

Only argument parsing and printing live here; heavy imports (torch, transformers, matplotlib) happen inside
the commands, so ``headplan plan`` starts fast on a machine without a GPU.
"""

__version__ = "0.1.0"
