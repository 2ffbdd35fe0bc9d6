"""The end-to-end trainer: AFA (Ru et al., CVPR 2022) on SegFormer's MiT with the WaveCAM branch, one
network trained once from image-level labels. end_to_end/{train,test,evaluate}.py are its front doors.

config       the YAML config and the front doors' shared arguments
preflight    the paths a run needs, checked before it writes anything
data         dataset sources, training crops, loaders
batching     the global batch over processes and micro-batches, the iteration-indexed sampler
model        WaveAFA, its optimiser and schedule
precision    float32 or autocast
checkpoints  training checkpoints, resume
evaluation   validation, the multi-scale test with its CRF workers, what results/*.json record
panels       TensorBoard image panels
train        the training job (one step, the schedule, the run)
test         the test job
evaluate     scoring a checkpoint without training
"""
