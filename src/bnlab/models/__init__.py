"""Models with a norm slot, and the registries that name models and norms.

``create(name, norm=...)`` builds a model (LeNet, MLP, ResNet-18/20/56, DenseNet, a
plain deep CNN); ``available()`` and ``available_norms()``
list the names; ``make_norm`` builds one normalization layer and ``register_norm``
adds a kind of layer to every model's slot; ``first_norm_affine`` reads gamma and beta
of a model's first normalization layer (d2l's batch-norm chapter prints them).
"""

from bnlab.models.densenet import DenseNet, densenet
from bnlab.models.lenet import LeNet
from bnlab.models.mlp import MLP
from bnlab.models.norms import (
    available_norms,
    check_norm,
    first_norm,
    first_norm_affine,
    is_norm_layer,
    make_norm,
    register_norm,
)
from bnlab.models.plain import plain
from bnlab.models.registry import available, create, register_model
from bnlab.models.resnet import ResNet, cifar_resnet, resnet18, resnet20, resnet56

__all__ = [
    "MLP",
    "DenseNet",
    "LeNet",
    "ResNet",
    "available",
    "available_norms",
    "check_norm",
    "cifar_resnet",
    "create",
    "densenet",
    "first_norm",
    "first_norm_affine",
    "is_norm_layer",
    "make_norm",
    "plain",
    "register_model",
    "register_norm",
    "resnet18",
    "resnet20",
    "resnet56",
]
