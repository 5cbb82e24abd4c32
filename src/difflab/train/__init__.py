"""Training on diffusers models: the bundled text-to-image model from scratch (VAE, then U-Net + text encoder).

Submodules import torch, diffusers and transformers; import them directly (``difflab.train.t2i``).
"""
