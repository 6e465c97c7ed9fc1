"""Inference: stages loaded from a weights folder (with their sampling defaults) and run as one
reconstruction. Imports nothing from data, training, tools or app."""
