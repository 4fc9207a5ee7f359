"""Distributed training helpers: compressed gradient all-reduce as a DDP communication hook."""

from .compression import CompressionState, compressed_allreduce, compressed_allreduce_hook

__all__ = ["CompressionState", "compressed_allreduce", "compressed_allreduce_hook"]
