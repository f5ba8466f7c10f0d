"""Exports: serving signatures, atomic versioned folders and the TF Serving configuration.

Nothing here is imported eagerly: the server only needs ``serving_config`` and must not pay for
(or depend on) the model code that ``savedmodels`` pulls in.
"""
