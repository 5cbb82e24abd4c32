"""difflab: diffusion from scratch to production image generation."""

__version__ = "0.1.0"
