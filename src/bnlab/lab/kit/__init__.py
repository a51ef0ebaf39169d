"""The lab's kit: what experiments share, so that no experiment imports another.

- ``models``: layers by role and the norm of "with BN" (``BN_NORM``);
- ``data``: fixed subsets (``take``, ``split``), endless batches, a probe batch;
- ``probes``: hooks as context managers (``capture``), looks at a train-mode copy
  (``probe_copy``), functional evaluation at other weights (``loss_at``);
- ``train``: one ``fit`` run over data subsets (``train_variant``);
- ``verdicts``: the claims' rules into verdicts (``ClaimRule``, ``decide``), numbers as
  table text;
- ``configs``: config checks, ``LabConfig`` (every config's seeds and quick run) and
  ``PairedConfig``, the stats-decided experiments' core;
- ``threads``: thread settings;
- ``paired`` (imported as a module, ``kit.paired``): the tuned-lr paired experiment's
  skeleton: ``TunedConfig``/``EpochsConfig`` (config bases), ``tuned_lab`` (the spec:
  tuning grid on a separate seed, lr choice, measured grid, summary), ``Tuned`` (the
  tuning's results.json keys, table and notes), ``claim_specs`` (claims declared
  compactly), the claims table of ``bnlab.lab.stats``' evaluations;
- ``sweeps`` (imported as a module, ``kit.sweeps``): one SGD run with the lr decayed to 0
  and readouts at matched fit (``train_run``), and the second edition's trainability
  sweeps (lr-sweep, init; ``SweepConfig``, per-seed largest value and width that
  train, censoring) that regularization's runs also use.

The step loop with hooks is ``bnlab.train.steps.run_steps``; the grid runner is
``bnlab.lab.runner``.
"""

from bnlab.lab.kit import paired, sweeps
from bnlab.lab.kit.configs import LabConfig, PairedConfig, check_positive
from bnlab.lab.kit.data import accuracy_on_test, batches, float_images, probe_batch, split, take
from bnlab.lab.kit.models import BN_NORM, norm_layers, weight_layers
from bnlab.lab.kit.probes import (
    batch_stats_accuracy,
    capture,
    detached_state,
    layers_of_type,
    loss_and_grad,
    loss_at,
    probe_copy,
)
from bnlab.lab.kit.threads import cpu_threads
from bnlab.lab.kit.train import DIVERGENCE_RULE, json_float, train_variant
from bnlab.lab.kit.verdicts import (
    ClaimRule,
    apply_rules,
    decide,
    finite_mean,
    mean_std,
    mean_std_cell,
    number_or_na,
    register_claims,
)

__all__ = [
    "BN_NORM",
    "DIVERGENCE_RULE",
    "ClaimRule",
    "LabConfig",
    "PairedConfig",
    "accuracy_on_test",
    "apply_rules",
    "batch_stats_accuracy",
    "batches",
    "capture",
    "check_positive",
    "cpu_threads",
    "decide",
    "detached_state",
    "finite_mean",
    "float_images",
    "json_float",
    "layers_of_type",
    "loss_and_grad",
    "loss_at",
    "mean_std",
    "mean_std_cell",
    "norm_layers",
    "number_or_na",
    "paired",
    "probe_batch",
    "probe_copy",
    "register_claims",
    "split",
    "sweeps",
    "take",
    "train_variant",
    "weight_layers",
]
