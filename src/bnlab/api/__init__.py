"""The Python API: the chapter, a training run and a lab experiment in one call each.

Filled in by the next commits; ``bnlab.api.norm_options`` holds the norm layer options
that ``bnlab train`` and ``bnlab.api.train`` share.
"""
