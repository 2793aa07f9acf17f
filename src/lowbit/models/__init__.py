"""The model zoo behind one registry.

>>> model = create_model("resnet18", num_classes=10, width=32, stem="3x3,3x3")
>>> list_models()[:4]
['binary_alexnet', 'binary_densenet28', 'binary_densenet37', 'binary_densenet45']
>>> print(format_summary(summary(model, (3, 32, 32))))

Every factory takes ``num_classes`` and ``in_channels`` (the toy MLP ignores
both) plus its own keyword options, and every model has ``input_shape``: one
example's shape without the batch dimension. ``register_model`` adds a model;
the parametrised tests then cover it. The binary zoo (Bi-Real Net, ReActNet,
QuickNet, BinaryDenseNet, ResNetE, XNOR-Net, DoReFa-Net, Binary AlexNet,
Real-to-Binary Net) takes ``stem="imagenet"`` (224x224) or ``stem="small"``
(32x32, 28x28); their parameter and MAC counts are those of the reference
implementations (docs/models.md). :func:`check_model_fits` says, before
training, whether a model takes a given image size.
"""

from __future__ import annotations

# Importing the model modules registers them.
from lowbit.models import (  # noqa: F401
    binary_alexnet,
    binary_densenet,
    birealnet,
    dla,
    dorefanet,
    lenet,
    mlp,
    quicknet,
    reactnet,
    real_to_binary,
    resnet,
    resnet9,
    resnet_e,
    vgg,
    xnor_resnet,
    xnornet,
)
from lowbit.models.binary_alexnet import BinaryAlexNet, binary_alexnet
from lowbit.models.binary_densenet import BinaryDenseNet, binary_densenet28, binary_densenet37, binary_densenet45
from lowbit.models.birealnet import BiRealNet18, birealnet18
from lowbit.models.dla import DLA, dla34
from lowbit.models.dorefanet import DoReFaNet, dorefanet
from lowbit.models.fit import check_model_fits
from lowbit.models.layers import ACTIVATIONS, STEMS, make_activation, make_stem
from lowbit.models.lenet import LeNet5, lenet5
from lowbit.models.mlp import ToyMLP, toy_mlp
from lowbit.models.quicknet import QuickNet, quicknet, quicknet_large, quicknet_small
from lowbit.models.reactnet import ReActNetA, reactnet_a
from lowbit.models.real_to_binary import RealToBinaryNet, real_to_binary_net
from lowbit.models.registry import create_model, list_models, register_model
from lowbit.models.resnet import BasicBlock, ResNet, resnet18
from lowbit.models.resnet9 import ResNet9, resnet9, simp_resnet9
from lowbit.models.resnet_e import BinaryResNetE18, binary_resnet_e18
from lowbit.models.summary import LayerSummary, ModelSummary, format_summary, summary
from lowbit.models.table import models_table
from lowbit.models.vgg import VGG, vgg_a
from lowbit.models.xnor_resnet import XnorBasicBlock, XnorResNet18, xnor_resnet18
from lowbit.models.xnornet import XNORNet, xnornet

__all__ = [
    "ACTIVATIONS",
    "BiRealNet18",
    "BinaryAlexNet",
    "BinaryDenseNet",
    "BinaryResNetE18",
    "DoReFaNet",
    "QuickNet",
    "ReActNetA",
    "RealToBinaryNet",
    "XNORNet",
    "binary_alexnet",
    "binary_densenet28",
    "binary_densenet37",
    "binary_densenet45",
    "binary_resnet_e18",
    "birealnet18",
    "check_model_fits",
    "dorefanet",
    "quicknet",
    "quicknet_large",
    "quicknet_small",
    "reactnet_a",
    "real_to_binary_net",
    "xnornet",
    "DLA",
    "STEMS",
    "VGG",
    "BasicBlock",
    "LayerSummary",
    "LeNet5",
    "ModelSummary",
    "ResNet",
    "ResNet9",
    "ToyMLP",
    "XnorBasicBlock",
    "XnorResNet18",
    "create_model",
    "dla34",
    "format_summary",
    "lenet5",
    "list_models",
    "make_activation",
    "make_stem",
    "models_table",
    "register_model",
    "resnet18",
    "resnet9",
    "simp_resnet9",
    "summary",
    "toy_mlp",
    "vgg_a",
    "xnor_resnet18",
]
