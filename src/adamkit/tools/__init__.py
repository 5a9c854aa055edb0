"""Tools around training with the Adam family: each a Python API for any compiled Keras model and
an ``adamkit`` command for the tutorial's model.

The modules import nothing from one another, so that each can be used (and imported) alone.
"""
