"""``bnlab.d2l.run(epochs=10)``: the d2l batch-norm chapter in one call, for notebooks.

The same experiment as ``bnlab d2l`` (``bnlab.lab.d2l``), with the data found and a
progress bar drawn as ``bnlab.api`` does; see ``bnlab.api.d2l`` for the arguments.
"""

from bnlab.api import D2LResult
from bnlab.api import d2l as run

__all__ = ["D2LResult", "run"]
