"""Model tier: reference architectures exported from torch, pruned at 0.3 and 0.5 with
l1 and random, and to half their MACs with bgsc. Each must stay valid, run, lose MACs, and match the masking oracle.
The default tier covers one model per architectural feature; `-m zoo` adds the deep
and wide variants (ResNet-101/152, DenseNet-121, EfficientNet-B1..B4, ResNeXt-50)."""
import functools

import pytest

from helpers import prune_and_check

torch = pytest.importorskip("torch")

DEFAULT_TIER = ["resnet18", "resnet50", "vgg11_bn", "mobilenet_v2", "mobilenet_v3_small",
                "efficientnet_b0", "densenet_small", "googlenet", "resnext_small", "regnety_400mf"]
HEAVY_TIER = ["resnet101", "resnet152", "densenet121", "efficientnet_b1", "efficientnet_b2",
              "efficientnet_b3", "efficientnet_b4", "resnext50_32x4d"]


@functools.lru_cache(maxsize=None)
def exported(name, keep_bn=True):
    from models import build
    torch.set_num_threads(2)
    return build(name, keep_bn=keep_bn)


def _check(name, ratio, criterion, keep_bn=True):
    proto = exported(name, keep_bn)
    _, report = prune_and_check(proto, ratio, criterion=criterion)
    assert report.after["macs"] < report.before["macs"]
    # every frozen group says why; only the interface should be frozen in these CNNs
    reasons = {g["frozen"] for g in report.frozen_groups}
    assert reasons <= {"graph input", "graph output"}, reasons
    return report


@pytest.mark.parametrize("criterion", ["l1", "random"])
@pytest.mark.parametrize("ratio", [0.3, 0.5])
@pytest.mark.parametrize("name", DEFAULT_TIER)
def test_zoo_default(name, ratio, criterion):
    _check(name, ratio, criterion)


@pytest.mark.parametrize("allocator", ["rank", "density"])
@pytest.mark.parametrize("name", DEFAULT_TIER)
def test_zoo_bgsc_mac_target(name, allocator):
    """The data-free criterion with a MAC target (both allocators), oracle on."""
    _, report = prune_and_check(exported(name), criterion="bgsc", target_macs=0.5, allocator=allocator)
    assert 0.45 <= report.after["macs"] / report.before["macs"] <= 0.5


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2", "efficientnet_b0", "densenet_small"])
def test_zoo_bn_folded(name):
    _check(name, 0.5, "l1", keep_bn=False)


@pytest.mark.zoo
@pytest.mark.parametrize("criterion", ["l1", "random"])
@pytest.mark.parametrize("ratio", [0.3, 0.5])
@pytest.mark.parametrize("name", HEAVY_TIER)
def test_zoo_heavy(name, ratio, criterion):
    _check(name, ratio, criterion)
