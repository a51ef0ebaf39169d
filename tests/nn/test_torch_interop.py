"""bnlab's layers seen by torch's own utilities (issue 18): real utilities, not look-alikes.

Every twin is an instance of its torch class, so code that finds batch norms with
``isinstance`` (``swa_utils.update_bn``, ``convert_sync_batchnorm``, fusion, freezing
and weight-decay patterns, fvcore-style precise BN) finds bnlab's; ``torch.fx`` records
them as leaves, ``torch.export`` and ``torch.jit.script`` compile models that hold them.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.ao.quantization import fuse_modules, fuse_modules_qat
from torch.nn.modules.batchnorm import _BatchNorm, _NormBase
from torch.nn.modules.instancenorm import _InstanceNorm
from torch.nn.modules.lazy import LazyModuleMixin
from torch.optim.swa_utils import update_bn

import bnlab.nn as B

TWINS = [
    (B.BatchNorm1d, nn.BatchNorm1d, (_BatchNorm, _NormBase)),
    (B.BatchNorm2d, nn.BatchNorm2d, (_BatchNorm, _NormBase)),
    (B.BatchNorm3d, nn.BatchNorm3d, (_BatchNorm, _NormBase)),
    (B.SyncBatchNorm, _BatchNorm, (_BatchNorm, _NormBase)),
    (B.BatchRenorm2d, nn.BatchNorm2d, (B.BatchNorm2d, _BatchNorm)),
    (B.GhostBatchNorm1d, nn.BatchNorm1d, (B.BatchNorm1d, _BatchNorm)),
    (B.InstanceNorm2d, nn.InstanceNorm2d, (_InstanceNorm, _NormBase)),
    (B.LazyBatchNorm2d, nn.LazyBatchNorm2d, (LazyModuleMixin, B.BatchNorm2d)),
]


@pytest.mark.parametrize(("ours", "twin", "bases"), TWINS, ids=lambda c: getattr(c, "__name__", ""))
def test_each_layer_is_an_instance_of_its_torch_class(ours, twin, bases) -> None:
    layer = ours() if issubclass(ours, LazyModuleMixin) else ours(4)
    assert isinstance(layer, twin)
    assert all(isinstance(layer, base) for base in bases)


def test_group_and_layer_norm_and_what_frozen_batch_norm_is_not() -> None:
    assert isinstance(B.GroupNorm(2, 4), nn.GroupNorm)
    assert isinstance(B.LayerNorm(4), nn.LayerNorm)
    assert not isinstance(B.InstanceNorm2d(4), _BatchNorm)  # as torch's
    # Frozen batch norm has no twin in torch core; it stays out of _BatchNorm so that
    # update_bn, convert_sync_batchnorm and friends leave its fixed statistics alone.
    frozen = B.FrozenBatchNorm2d(4)
    assert not isinstance(frozen, _NormBase)
    model = nn.Sequential(frozen)
    update_bn([torch.randn(8, 4, 3, 3) + 5], model)
    assert torch.equal(frozen.running_mean, torch.zeros(4))
    assert nn.SyncBatchNorm.convert_sync_batchnorm(model)[0] is frozen


def _conv_bn_net(bn: type[nn.Module] = B.BatchNorm2d) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3),
        bn(6),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(6 * 4 * 4, 5),
        B.BatchNorm1d(5),
    )


def _batches(count: int, size: int = 16) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return [torch.randn(size, 3, 6, 6, generator=gen) * 2 + 1 for _ in range(count)]


def _bn_stats(model: nn.Module) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [
        (m.running_mean.clone(), m.running_var.clone())
        for m in model.modules()
        if isinstance(m, _BatchNorm)
    ]


def test_swa_update_bn_gives_recalibrate_batchnorm_statistics() -> None:
    one = _batches(1, size=64)
    by_torch, by_bnlab = _conv_bn_net(), _conv_bn_net()
    update_bn(one, by_torch)
    B.recalibrate_batchnorm(by_bnlab, one)
    stats_torch, stats_bnlab = _bn_stats(by_torch), _bn_stats(by_bnlab)
    assert len(stats_torch) == 2
    # update_bn really moved our buffers (issue 18: it used to leave them unchanged).
    assert not torch.allclose(stats_torch[0][0], torch.zeros(6))
    for (mean_t, var_t), (mean_b, var_b) in zip(stats_torch, stats_bnlab, strict=True):
        torch.testing.assert_close(mean_t, mean_b, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(var_t, var_b, rtol=1e-5, atol=1e-6)


def test_swa_update_bn_averages_batch_statistics_over_several_batches() -> None:
    # update_bn's estimate is the mean of the batch means and of the unbiased batch
    # variances; recalibrate_batchnorm's is the pooled one. Means agree (equal batch
    # sizes); update_bn's variance is the first layer's average unbiased batch variance.
    batches = _batches(4)
    by_torch, by_bnlab = _conv_bn_net(), _conv_bn_net()
    update_bn(batches, by_torch)
    B.recalibrate_batchnorm(by_bnlab, batches)
    for (mean_t, _), (mean_b, _) in zip(_bn_stats(by_torch), _bn_stats(by_bnlab), strict=True):
        torch.testing.assert_close(mean_t, mean_b, rtol=1e-5, atol=1e-5)
    conv = by_torch[0]
    with torch.no_grad():
        per_batch = [conv(x).transpose(0, 1).flatten(1).var(dim=1) for x in batches]
    torch.testing.assert_close(by_torch[1].running_var, torch.stack(per_batch).mean(0))
    assert int(by_torch[1].num_batches_tracked) == 4


def test_sync_batchnorm_is_not_torchs_so_that_ddp_takes_it_on_cpu() -> None:
    # DistributedDataParallel raises for any torch.nn.SyncBatchNorm in a CPU module;
    # bnlab's SyncBatchNorm runs there (gloo), so it must not be one.
    assert not isinstance(B.SyncBatchNorm(3), nn.SyncBatchNorm)


def test_torch_convert_sync_batchnorm_replaces_ours_by_torchs_own_class() -> None:
    model = _conv_bn_net()
    old = model[1]
    converted = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    assert type(converted[1]) is nn.SyncBatchNorm
    assert converted[1].weight is old.weight
    assert converted[1].running_mean is old.running_mean
    assert type(converted[5]) is nn.SyncBatchNorm


def test_bnlab_convert_sync_batchnorm_keeps_bnlab_and_skips_other_maths() -> None:
    model = nn.Sequential(B.BatchNorm2d(3), B.BatchRenorm2d(3), B.GhostBatchNorm2d(3))
    converted = B.convert_sync_batchnorm(model)
    assert type(converted[0]) is B.SyncBatchNorm
    assert type(converted[1]) is B.BatchRenorm2d
    assert type(converted[2]) is B.GhostBatchNorm2d
    # torch's conversion takes every _BatchNorm, as it does for subclasses of its own.
    converted = nn.SyncBatchNorm.convert_sync_batchnorm(
        nn.Sequential(B.BatchRenorm2d(3), B.SyncBatchNorm(3))
    )
    assert [type(m) for m in converted] == [nn.SyncBatchNorm, nn.SyncBatchNorm]
    assert type(B.SyncBatchNorm.convert_sync_batchnorm(B.BatchNorm1d(3))) is B.SyncBatchNorm


def _trained(model: nn.Module) -> nn.Module:
    for x in _batches(3):
        model(x)
    return model.eval()


def test_fuse_conv_bn_eval_folds_our_layer() -> None:
    model = _trained(_conv_bn_net())
    fused = torch.nn.utils.fusion.fuse_conv_bn_eval(model[0], model[1])
    x = _batches(1)[0]
    torch.testing.assert_close(fused(x), model[1](model[0](x)), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("bn", [nn.BatchNorm2d, B.BatchNorm2d])
def test_fuse_modules_needs_a_fuser_method_for_any_class_but_torchs(bn) -> None:
    # fuse_modules looks fuser methods up by exact type; FUSER_METHOD_MAPPING adds ours.
    model = _trained(_conv_bn_net(bn))
    x = _batches(1)[0]
    expected = model(x)
    if bn is B.BatchNorm2d:
        with pytest.raises(AssertionError, match="did not find fuser method for"):
            fuse_modules(model, [["0", "1", "2"]])
    config = {"additional_fuser_method_mapping": B.FUSER_METHOD_MAPPING}
    fused = fuse_modules(model, [["0", "1", "2"], ["4", "5"]], fuse_custom_config_dict=config)
    assert [type(m) for m in fused][1:3] == [nn.Identity, nn.Identity]
    assert type(fused[5]) is nn.Identity
    torch.testing.assert_close(fused(x), expected, rtol=1e-4, atol=1e-5)


def test_fuse_modules_qat_builds_torchs_conv_bn_from_ours() -> None:
    model = _conv_bn_net().train()
    config = {"additional_fuser_method_mapping": B.FUSER_METHOD_MAPPING}
    fused = fuse_modules_qat(model, [["0", "1", "2"]], fuse_custom_config_dict=config)
    assert type(fused[0]).__name__ == "ConvBnReLU2d"
    assert type(fused[0][1]) is nn.BatchNorm2d
    torch.testing.assert_close(fused[0][1].weight, model[1].weight)


def test_as_torch_batchnorm_refuses_other_maths() -> None:
    with pytest.raises(TypeError, match=r"^as_torch_batchnorm: expected bnlab's BatchNorm1d"):
        B.as_torch_batchnorm(B.BatchRenorm2d(3))


def test_fx_symbolic_trace_records_our_layers_as_leaves() -> None:
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3), B.BatchNorm2d(4), B.GroupNorm(2, 4), B.InstanceNorm2d(4), B.LayerNorm(4)
    )
    traced = torch.fx.symbolic_trace(model)
    calls = [n.target for n in traced.graph.nodes if n.op == "call_module"]
    assert calls == ["0", "1", "2", "3", "4"]
    assert traced.get_submodule("1") is model[1]
    x = _batches(1)[0]
    torch.testing.assert_close(traced(x), model(x))
    assert int(model[1].num_batches_tracked) == 2
    with pytest.raises(TypeError, match=r"^BatchNorm2d: expected a torch.Tensor input, got list$"):
        model[1]([1.0])


@pytest.mark.parametrize("training", [False, True])
def test_torch_export_runs_our_layer(training: bool) -> None:
    model = _trained(_conv_bn_net()).train(training)
    x = _batches(1)[0]
    reference = copy.deepcopy(model)
    exported = torch.export.export(model, (x,)).module()
    # In training the exported graph normalizes with the batch statistics and updates
    # the running statistics, as the eager layer does.
    torch.testing.assert_close(exported(x), reference(x), rtol=1e-4, atol=1e-5)
    if training:
        torch.testing.assert_close(exported.state_dict()["1.running_var"], reference[1].running_var)


@pytest.mark.parametrize("training", [False, True])
def test_torch_jit_script_compiles_our_batch_norm_as_torchs_map(training: bool) -> None:
    ours, ref = _conv_bn_net(), _conv_bn_net(nn.BatchNorm2d)
    ref[5] = nn.BatchNorm1d(5)
    ref.load_state_dict(ours.state_dict())
    ours.train(training), ref.train(training)
    scripted = torch.jit.script(ours)
    assert type(ours[1]) is B.BatchNorm2d  # scripting does not swap the eager layers
    for x in _batches(2):
        torch.testing.assert_close(scripted(x), ref(x), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(ours[1].running_var, ref[1].running_var)
    assert int(ours[1].num_batches_tracked) == (2 if training else 0)


@pytest.mark.parametrize("layer", [B.BatchRenorm2d(4), B.GhostBatchNorm2d(4), B.SyncBatchNorm(4)])
def test_torch_jit_script_refuses_other_maths_with_a_message(layer: nn.Module) -> None:
    name = type(layer).__name__
    with pytest.raises(TypeError, match=f"^torch.jit.script: {name} cannot be compiled"):
        torch.jit.script(nn.Sequential(nn.Conv2d(3, 4, 1), layer))


def test_model_apply_patterns_written_for_torch_treat_ours_as_torchs() -> None:
    model = _conv_bn_net()

    def freeze_bn(m: nn.Module) -> None:
        if isinstance(m, nn.BatchNorm2d):
            m.eval()
            m.weight.requires_grad_(False)
            m.bias.requires_grad_(False)

    model.apply(freeze_bn)
    assert not model[1].training
    assert not model[1].weight.requires_grad
    assert model[5].training  # a BatchNorm1d, not frozen by the pattern
    no_decay = {
        id(p)
        for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm)
        for p in m.parameters(recurse=False)
    }
    assert no_decay == {
        id(model[1].weight),
        id(model[1].bias),
        id(model[5].weight),
        id(model[5].bias),
    }


def test_fvcore_style_precise_bn_search_finds_ours() -> None:
    # fvcore.nn.precise_bn.BN_MODULE_TYPES, and its get_bn_modules.
    bn_module_types = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)
    model = nn.Sequential(_conv_bn_net(), B.SyncBatchNorm(5))
    found = [m for m in model.modules() if m.training and isinstance(m, bn_module_types)]
    # bnlab's SyncBatchNorm is no torch SyncBatchNorm (DDP refuses those on CPU): a
    # search by torch's four classes misses it; one by _BatchNorm finds it.
    assert found == [model[0][1], model[0][5]]
    assert [m for m in model.modules() if isinstance(m, _BatchNorm)] == [*found, model[1]]


def _d2l_lenet(bn1d: type[nn.Module], bn2d: type[nn.Module]) -> nn.Sequential:
    # d2l's BN LeNet (chapter "Batch Normalization", current edition), lazy layers.
    torch.manual_seed(0)
    return nn.Sequential(
        nn.LazyConv2d(6, kernel_size=5), bn2d(), nn.Sigmoid(), nn.AvgPool2d(2, 2),
        nn.LazyConv2d(16, kernel_size=5), bn2d(), nn.Sigmoid(), nn.AvgPool2d(2, 2),
        nn.Flatten(), nn.LazyLinear(120), bn1d(), nn.Sigmoid(),
        nn.LazyLinear(84), bn1d(), nn.Sigmoid(), nn.LazyLinear(10),
    )  # fmt: skip


def test_lazy_batch_norm_on_d2l_lenet_matches_torch_and_becomes_ours() -> None:
    ours = _d2l_lenet(B.LazyBatchNorm1d, B.LazyBatchNorm2d)
    ref = _d2l_lenet(nn.LazyBatchNorm1d, nn.LazyBatchNorm2d)
    assert isinstance(ours[1], nn.LazyBatchNorm2d)
    assert ours[1].has_uninitialized_params()
    x = torch.randn(32, 1, 28, 28, generator=torch.Generator().manual_seed(2))
    for model in (ours, ref):  # the lazy convs draw their weights at the first call
        torch.manual_seed(0)
        model(x[:2])
    for _ in range(2):
        torch.testing.assert_close(ours(x), ref(x), rtol=1e-4, atol=1e-5)
    assert [type(ours[i]) for i in (1, 5, 10, 13)] == [B.BatchNorm2d] * 2 + [B.BatchNorm1d] * 2
    assert ours[1].num_features == 6
    assert ours[10].num_features == 120
    assert ours.state_dict().keys() == ref.state_dict().keys()
    for a, b in zip(ours.state_dict().values(), ref.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    ours.eval(), ref.eval()
    torch.testing.assert_close(ours(x), ref(x), rtol=1e-4, atol=1e-5)


def test_lazy_batch_norm_state_dict_loads_both_ways() -> None:
    x = torch.randn(8, 1, 28, 28)
    trained_ref = _d2l_lenet(nn.LazyBatchNorm1d, nn.LazyBatchNorm2d)
    trained_ref(x)
    fresh_ours = _d2l_lenet(B.LazyBatchNorm1d, B.LazyBatchNorm2d)
    fresh_ours.load_state_dict(trained_ref.state_dict())  # materializes from the shapes
    assert not fresh_ours[1].has_uninitialized_params()
    torch.testing.assert_close(fresh_ours.eval()(x), trained_ref.eval()(x), rtol=1e-4, atol=1e-5)
    assert type(fresh_ours[1]) is B.BatchNorm2d
    assert fresh_ours[1].num_features == 6
    fresh_ref = _d2l_lenet(nn.LazyBatchNorm1d, nn.LazyBatchNorm2d)
    fresh_ref.load_state_dict(fresh_ours.state_dict())
    torch.testing.assert_close(fresh_ref.eval()(x), fresh_ours(x), rtol=1e-4, atol=1e-5)


def test_lazy_batch_norm_checks_its_arguments_and_refuses_sync_conversion_before_input() -> None:
    with pytest.raises(ValueError, match=r"^LazyBatchNorm2d: eps must be > 0"):
        B.LazyBatchNorm2d(eps=0.0)
    with pytest.raises(ValueError, match="has uninitialized parameters"):
        B.convert_sync_batchnorm(nn.Sequential(B.LazyBatchNorm2d()))


@pytest.mark.parametrize(
    ("layer", "twin", "shape"),
    [
        (lambda: B.LayerNorm(6), lambda: nn.LayerNorm(6), (4, 6)),
        (lambda: B.GroupNorm(2, 6), lambda: nn.GroupNorm(2, 6), (4, 6, 5)),
        (
            lambda: B.InstanceNorm2d(6, affine=True, track_running_stats=True),
            lambda: nn.InstanceNorm2d(6, affine=True, track_running_stats=True),
            (4, 6, 5, 5),
        ),
    ],
    ids=["LayerNorm", "GroupNorm", "InstanceNorm2d"],
)
def test_torch_jit_script_compiles_layer_group_instance_norm_as_torchs(layer, twin, shape) -> None:
    # TorchScript compiles torch's layer in bnlab's place: the same parameters and map.
    torch.manual_seed(0)
    ours, ref = layer(), twin()
    with torch.no_grad():
        for p in ours.parameters():
            p.uniform_(0.5, 1.5)
    ref.load_state_dict(ours.state_dict())
    scripted = torch.jit.script(nn.Sequential(ours))
    assert type(ours).__module__.startswith("bnlab")  # the eager layer stays bnlab's
    x = torch.randn(shape)
    out = scripted(x)
    torch.testing.assert_close(out, ref(x), rtol=1e-5, atol=1e-5)
    out.sum().backward()  # the scripted graph trains the eager layer's parameters
    assert all(p.grad is not None for p in ours.parameters())
