"""What the export tests run in a subprocess to prove a runner works without torch: a prelude that makes any import
of torch or torchvision fail (a unique module name, importable from any test)."""

import textwrap

BLOCK_TORCH = textwrap.dedent("""
    import importlib.abc, sys

    class BlockTorch(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name.split(".")[0] in ("torch", "torchvision"):
                raise ImportError(f"blocked import of {name}")
            return None

    sys.meta_path.insert(0, BlockTorch())
""")
