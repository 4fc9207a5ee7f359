"""Distributed training: compressed gradient all-reduce as a DDP communication hook,
tensor-parallel (quantized) layers, and the data x tensor parallel mesh."""

from .compression import CompressionState, compressed_allreduce, compressed_allreduce_hook
from .parallelize import (
    TRANSFORMER_PLAN,
    init_hybrid,
    parallelize,
    replicated_parameters,
    sync_replicated_grads,
    tensor_parallel_group,
)
from .tensor_parallel import (
    ColumnParallelLinear,
    RowParallelLinear,
    copy_to_tensor_parallel_region,
    full_state_dict,
    gather_from_tensor_parallel_region,
    load_full_state_dict,
    reduce_from_tensor_parallel_region,
    scatter_to_tensor_parallel_region,
)

__all__ = ["TRANSFORMER_PLAN", "ColumnParallelLinear", "CompressionState", "RowParallelLinear",
           "compressed_allreduce", "compressed_allreduce_hook", "copy_to_tensor_parallel_region", "full_state_dict",
           "gather_from_tensor_parallel_region", "init_hybrid", "load_full_state_dict", "parallelize",
           "reduce_from_tensor_parallel_region", "replicated_parameters", "scatter_to_tensor_parallel_region",
           "sync_replicated_grads", "tensor_parallel_group"]
