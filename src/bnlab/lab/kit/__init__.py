"""The lab's kit: what experiments share, so that no experiment imports another.

- ``models``: architectures by name (``ARCHS``, ``build_model``) and layers by role;
- ``data``: fixed subsets (``take``, ``split``), endless batches, a probe batch;
- ``probes``: hooks as context managers (``capture``), looks at a train-mode copy
  (``probe_copy``), functional evaluation at other weights (``loss_at``);
- ``train``: one ``fit`` run over data subsets (``train_variant``);
- ``verdicts``: comparisons of variants per setting, rules into verdicts;
- ``configs``: config checks, ``LabConfig`` (every config's seeds and quick run) and
  ``ProbingConfig``, the probing experiments' core, ``PairedConfig``, the stats-decided
  experiments' core;
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
from bnlab.lab.kit.configs import (
    LabConfig,
    PairedConfig,
    ProbingConfig,
    check_positive,
    probing_lab,
)
from bnlab.lab.kit.data import accuracy_on_test, batches, float_images, probe_batch, split, take
from bnlab.lab.kit.models import (
    ARCHS,
    BN_NORM,
    arch_label,
    build_model,
    check_archs,
    norm_layers,
    weight_layers,
)
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
from bnlab.lab.kit.train import DIVERGENCE_RULE, json_float, renorm_warmup, train_variant
from bnlab.lab.kit.verdicts import (
    TRAINS_RULE,
    ClaimRule,
    apply_rules,
    compare_variants,
    comparison_fields,
    decide,
    difference_text,
    directions_verdict,
    evidence_text,
    finite_mean,
    hits_verdict,
    ladder_verdict,
    mean_std,
    mean_std_cell,
    number_or_na,
    pick,
    plateau_notes,
    register_claims,
    trainable_values,
    variant_mean,
)

__all__ = [
    "ARCHS",
    "BN_NORM",
    "DIVERGENCE_RULE",
    "TRAINS_RULE",
    "ClaimRule",
    "LabConfig",
    "PairedConfig",
    "ProbingConfig",
    "accuracy_on_test",
    "apply_rules",
    "arch_label",
    "batch_stats_accuracy",
    "batches",
    "build_model",
    "capture",
    "check_archs",
    "check_positive",
    "compare_variants",
    "comparison_fields",
    "cpu_threads",
    "decide",
    "detached_state",
    "difference_text",
    "directions_verdict",
    "evidence_text",
    "finite_mean",
    "float_images",
    "hits_verdict",
    "json_float",
    "ladder_verdict",
    "layers_of_type",
    "loss_and_grad",
    "loss_at",
    "mean_std",
    "mean_std_cell",
    "norm_layers",
    "number_or_na",
    "paired",
    "pick",
    "plateau_notes",
    "probe_batch",
    "probe_copy",
    "probing_lab",
    "register_claims",
    "renorm_warmup",
    "split",
    "sweeps",
    "take",
    "train_variant",
    "trainable_values",
    "variant_mean",
    "weight_layers",
]
