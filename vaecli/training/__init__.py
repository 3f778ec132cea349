"""Training: the Trainer (trainer.py), its features as callbacks (callbacks.py), the experiment
trackers (tracking.py) and the VQ-VAE's second stage (prior.py)."""
