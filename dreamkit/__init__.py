"""dreamkit: text to 3D/4D assets by score distillation.

Importing dreamkit is light: no diffusers, gsplat, nerfacc, kaolin, tinycudann or CUDA code is loaded until a
component that needs it is built.
"""
__version__ = "0.1.0"
