"""AXON engine: radiographs -> 3D CT with a three-stage diffusion pipeline.

The engine never imports Slicer; the Slicer module in the parent folder is a thin layer over it.
"""

__version__ = "0.1.0"
