"""The end-to-end trainer: AFA (Ru et al., CVPR 2022) on SegFormer's MiT with the WaveCAM branch, one
network trained once from image-level labels; its loop, sampler, precision and train state are the
engine's (wavecam.engine). end_to_end/{train,test,evaluate}.py are its front doors.

config       the YAML config and the front doors' shared arguments
preflight    the paths a run needs, checked before it writes anything
data         dataset sources, training crops, loaders
model        WaveAFA, its optimiser and schedule
checkpoints  training checkpoints (the engine's train state), resume
evaluation   validation, the multi-scale test with its CRF workers, what results/*.json record
panels       TensorBoard image panels
train        the training job (one step, the schedule, the run)
test         the test job
evaluate     scoring a checkpoint without training
"""
