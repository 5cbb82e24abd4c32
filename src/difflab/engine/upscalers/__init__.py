"""Image upscalers: ESRGAN-family networks (RRDBNet, Real-ESRGAN's compact SRVGGNet) loaded from the files A1111,
ComfyUI and Forge users have, run tiled; and the plain resamplers (Lanczos, Nearest). See ``registry.py``."""
