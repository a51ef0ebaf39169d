"""Experiments: each measures a claim about batch normalization and writes its results.

``bnlab.lab.experiment`` is what every ``bnlab lab NAME`` shares (results folder, resume
by units, statistics for verdicts); ``bnlab.lab.runner`` runs an experiment's grid
(setting x variant x seed: train, measure, store each cell once); ``bnlab.lab.kit``
holds what experiments share (architectures, data, probes, verdict helpers), so no
experiment imports another. Each experiment module registers its ``LabSpec`` when
imported; importing this package imports them all.
"""

# ruff: noqa: I001  (registration order is the order of `bnlab lab --list` and of the
# claims table: the seeds' headline claim (convergence), the optimization claims, then
# batch size and prediction, then the rest)
from bnlab.lab import convergence as convergence
from bnlab.lab import ics as ics
from bnlab.lab import landscape as landscape
from bnlab.lab import saturation as saturation
from bnlab.lab import lr_sweep as lr_sweep
from bnlab.lab import init_scale as init_scale
from bnlab.lab import input_norm as input_norm
from bnlab.lab import placement as placement
from bnlab.lab import regularization as regularization
from bnlab.lab import batch_size as batch_size
from bnlab.lab import batch_of_one as batch_of_one
from bnlab.lab import predict_mode as predict_mode
from bnlab.lab import shift_mcc as shift_mcc
from bnlab.lab import sequence as sequence
from bnlab.lab import gan as gan
from bnlab.lab import depth as depth
