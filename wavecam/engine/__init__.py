"""The plumbing both pipelines share, one copy of each concern.

runtime   the process: torchrun's group, device, autocast, DDP and the cuDNN policy
sampling  one stateless sampler keyed by (seed, epoch or step, index); samples draw from their key
state     the train state (model, optimiser, scheduler, scaler, progress, settings), saved atomically
loop      one training loop: NaN guard, gradient accumulation, hooks for logging/evaluation/saving
logging   log files, meters with ETA and throughput, TensorBoard
parallel  process pools for image-wise work
results   results/*.json with the settings that produced them
cli       a command line's errors as one readable line
"""
