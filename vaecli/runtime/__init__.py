"""The machine and the run folder: device and threads (device.py, sharing.py), torchrun
(distributed.py), the run folder's files (runs.py) and the safetensors checkpoints (checkpoint.py).
Below evaluation and training, above the models and data."""
