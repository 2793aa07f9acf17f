"""The model zoo behind one registry.

>>> model = create_model("resnet18", num_classes=10, width=32, stem="3x3,3x3")
>>> list_models()
['dla34', 'lenet5', 'resnet18', 'resnet9', 'simp_resnet9', 'toy_mlp', 'vgg_a', 'xnor_resnet18']
>>> print(format_summary(summary(model, (3, 32, 32))))

Every factory takes ``num_classes`` and ``in_channels`` (the toy MLP ignores
both) plus its own keyword options, and every model has ``input_shape``: one
example's shape without the batch dimension. ``register_model`` adds a model;
the parametrised tests then cover it.
"""

from __future__ import annotations

# Importing the model modules registers them.
from lowbit.models import dla, lenet, mlp, resnet, resnet9, vgg, xnor_resnet  # noqa: F401
from lowbit.models.dla import DLA, dla34
from lowbit.models.layers import ACTIVATIONS, STEMS, make_activation, make_stem
from lowbit.models.lenet import LeNet5, lenet5
from lowbit.models.mlp import ToyMLP, toy_mlp
from lowbit.models.registry import create_model, list_models, register_model
from lowbit.models.resnet import BasicBlock, ResNet, resnet18
from lowbit.models.resnet9 import ResNet9, resnet9, simp_resnet9
from lowbit.models.summary import LayerSummary, ModelSummary, format_summary, summary
from lowbit.models.table import models_table
from lowbit.models.vgg import VGG, vgg_a
from lowbit.models.xnor_resnet import XnorBasicBlock, XnorResNet18, xnor_resnet18

__all__ = [
    "ACTIVATIONS",
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
