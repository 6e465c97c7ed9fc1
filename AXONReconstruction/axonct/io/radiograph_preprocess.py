"""The old home of the model-view transforms, kept for one importer only.

:mod:`axonct.pipeline.framing` imports ``frame_window`` and ``to_model_view`` from here and must not
change while a training run uses it; everything else imports :mod:`axonct.transforms.window`.
Delete this module once framing imports from there (Testing/engine/test_layers.py keeps other
importers out).
"""

from axonct.transforms.window import frame_window, to_model_view

__all__ = ["frame_window", "to_model_view"]
