"""The model: fusion modules, the multi-stream network, warm start, checkpoints, the device policy.

torch and MONAI, no Ray.
"""
