"""Distributed training: compressed gradient all-reduce as a DDP communication hook,
tensor-parallel (quantized) layers, expert-parallel mixture-of-experts blocks, pipeline stages, and
the data x tensor parallel mesh."""

from .compression import CompressionState, compressed_allreduce, compressed_allreduce_hook
from .experts import ExpertParallel, shard_experts
from .generation_options import generation_options
from .parallelize import (
    GPT2_PLAN,
    GPT_NEOX_PLAN,
    OLMO2_PLAN,
    PHI3_PLAN,
    TRANSFORMER_PLAN,
    default_plan,
    init_hybrid,
    parallelize,
    replicated_parameters,
    shutdown,
    sync_replicated_grads,
    tensor_parallel_group,
)
from .pipeline import (
    DECODER_MODEL_TYPES,
    DecoderStage,
    GPTStage,
    distillation_loss_fn,
    gpt_stage,
    load_stage,
    next_token_loss_fn,
    pipeline_forward,
    pipeline_generate,
    pipeline_schedule,
    pipeline_stage,
    pipeline_stages,
    save_stage,
    stage_layer_ranges,
    sync_tied_grads,
)
from .tensor_parallel import (
    ColumnParallelLinear,
    HeadParallel,
    ParallelRMSNorm,
    RowParallelLinear,
    copy_to_tensor_parallel_region,
    full_state_dict,
    gather_from_tensor_parallel_region,
    load_full_state_dict,
    reduce_from_tensor_parallel_region,
    scatter_to_tensor_parallel_region,
)

__all__ = ["ColumnParallelLinear", "CompressionState", "DECODER_MODEL_TYPES", "DecoderStage", "ExpertParallel",
           "GPT2_PLAN", "GPTStage", "GPT_NEOX_PLAN", "HeadParallel", "OLMO2_PLAN", "PHI3_PLAN", "ParallelRMSNorm",
           "RowParallelLinear", "TRANSFORMER_PLAN", "compressed_allreduce", "compressed_allreduce_hook",
           "copy_to_tensor_parallel_region", "default_plan", "distillation_loss_fn", "full_state_dict",
           "gather_from_tensor_parallel_region", "generation_options", "gpt_stage", "init_hybrid",
           "load_full_state_dict", "load_stage", "next_token_loss_fn", "parallelize", "pipeline_forward",
           "pipeline_generate", "pipeline_schedule", "pipeline_stage", "pipeline_stages",
           "reduce_from_tensor_parallel_region", "replicated_parameters", "save_stage",
           "scatter_to_tensor_parallel_region", "shard_experts", "shutdown", "stage_layer_ranges",
           "sync_replicated_grads", "sync_tied_grads", "tensor_parallel_group"]
