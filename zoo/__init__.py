"""seqrec-zoo: a model zoo for sequential recommendation."""

from zoo.registry import create_block, list_blocks, register_block

__all__ = ["register_block", "list_blocks", "create_block"]
__version__ = "0.1.0"
