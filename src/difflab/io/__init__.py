"""Small file-system helpers below ``core`` and ``engine`` that know nothing about diffusion."""
