"""Figures of merit and pictures of a trained model: bounds and diagnostics (evaluate.py), per-image
scores (scoring.py), sample quality (sample_quality.py), disentanglement metrics, the fitted
samplers, and the pictures the commands draw. The trainer calls into it; it never calls the trainer."""
