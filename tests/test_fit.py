"""emq fit: layer keys, the layer_weights field of proxy files, weighted evaluation, and the smooth-Kendall fit."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from emq.evaluate import StackedStats, evaluate_stacked
from emq.fit import FitSettings, fit_layer_weights, soft_kendall
from emq.fitness import kendall
from emq.layer_weights import LayerWeights, LayerWeightsError, layer_keys, layer_type
from emq.proxy import Proxy
from emq.stats import NetworkStats


def network(scales: list[float], depth_names: list[str] | None = None, seed: int = 0) -> NetworkStats:
    """A network whose layer i has a 4x4 gradient of L2 norm about scales[i]."""
    gen = torch.Generator().manual_seed(seed)
    names = depth_names or [f"blocks.{i}.fc" for i in range(len(scales))]
    layers = {}
    for name, scale in zip(names, scales):
        g = torch.randn(4, 4, generator=gen)
        layers[name] = {"grad": g / g.norm() * scale, "weight": torch.randn(4, 4, generator=gen)}
    return NetworkStats(layers, {n: 16 for n in names}, {n: 16 for n in names})


def test_layer_types_drop_container_indices_and_keep_layer_roles():
    assert layer_type("stage2.cell4.edge1to3.conv") == "stage#.cell#.edge1to3.conv"
    assert layer_type("blocks.11.mlp.fc1") == "blocks.#.mlp.fc1"
    assert layer_type("layer3.0.conv2") == "layer#.#.conv2"
    assert layer_type("classifier") == "classifier"


@given(st.lists(st.sampled_from(["a.0.x", "a.1.y", "stem", "head", "stage3.z"]), min_size=1, max_size=40),
       st.integers(1, 8))
@settings(max_examples=60, deadline=None)
def test_type_keys_bucket_the_relative_depth(names, buckets):
    keys = layer_keys(names, "type", buckets)
    assert len(keys) == len(names)
    found = [int(k.rsplit("@", 1)[1]) for k in keys]
    assert found == sorted(found) and 0 <= found[0] and found[-1] < buckets
    assert layer_keys(names, "name") == names


def test_the_same_layer_type_at_the_same_relative_depth_shares_a_key_across_depths():
    short = [f"blocks.{i}.attn.qkv" for i in range(6)]
    deep = [f"blocks.{i}.attn.qkv" for i in range(12)]
    assert layer_keys(short)[0] == layer_keys(deep)[0] and layer_keys(short)[-1] == layer_keys(deep)[-1]


def test_weights_of_one_give_bit_identical_scores_and_others_weight_each_layer():
    stats = [network([1.0, 2.0, 3.0], seed=s) for s in range(5)]
    proxy = Proxy.from_formula("sum_layers(l2(grad))")
    plain, _ = evaluate_stacked(proxy, StackedStats(stats))
    ones, _ = evaluate_stacked(proxy.with_layer_weights(LayerWeights({})), StackedStats(stats))
    assert np.array_equal(plain, ones)
    weights = LayerWeights({"blocks.0.fc": 2.0, "blocks.2.fc": 0.5}, mode="name")
    weighted, _ = evaluate_stacked(proxy.with_layer_weights(weights), StackedStats(stats))
    assert np.allclose(weighted, 2.0 * 1 + 2.0 + 0.5 * 3.0, rtol=1e-5)


def test_layer_weights_survive_the_proxy_file_and_old_files_still_read(tmp_path):
    proxy = Proxy.from_formula("mean_layers(l2(grad))").with_layer_weights(
        LayerWeights({"blocks.#.fc@0": 3.0}, fitted={"method": "test"}))
    path = proxy.save(tmp_path / "p.json")
    again = Proxy.load(path)
    assert again == proxy and again.layer_weights.weights == {"blocks.#.fc@0": 3.0}
    data = json.loads(path.read_text())
    del data["layer_weights"]
    assert Proxy.from_json(data).layer_weights is None


@pytest.mark.parametrize("field, value, match", [
    ("mode", "depth", "mode is 'depth'"),
    ("buckets", 0, "buckets must be"),
    ("weights", {"a": "big"}, r"weights\['a'\] must be a finite number"),
    ("format", "other/1", "format is 'other/1'"),
])
def test_a_malformed_layer_weights_field_names_the_file_and_field(tmp_path, field, value, match):
    data = Proxy.from_formula("sum_layers(l2(grad))").with_layer_weights(LayerWeights({"a": 1.0})).to_json()
    data["layer_weights"][field] = value
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(LayerWeightsError, match=match) as err:
        Proxy.load(path)
    assert str(path) in str(err.value)


def test_soft_kendall_tends_to_kendall_as_the_temperature_falls():
    rng = np.random.default_rng(0)
    s, y = rng.normal(size=40), rng.normal(size=40)
    soft = float(soft_kendall(torch.tensor(s), torch.tensor(y), 1e-4))
    assert soft == pytest.approx(kendall(s, y), abs=1e-6)


def test_the_fit_recovers_unequal_layer_contributions():
    """Truth weights layer 0 by 5 and layer 2 by 0.1; the unfitted sum ranks worse than the fitted one on new networks."""
    rng = np.random.default_rng(1)

    def make(n: int, offset: int) -> tuple[list[NetworkStats], np.ndarray]:
        scales = rng.uniform(0.5, 2.0, size=(n, 3))
        stats = [network(list(row), seed=offset + i) for i, row in enumerate(scales)]
        return stats, scales @ np.array([5.0, 1.0, 0.1])

    train, y_train = make(120, 0)
    test, y_test = make(80, 1000)
    proxy = Proxy.from_formula("sum_layers(l2(grad))")
    result = fit_layer_weights(proxy, train, {"acc": y_train}, FitSettings(mode="name", steps=200, lr=0.1))
    w = result.weights.weights
    assert w["blocks.0.fc"] > w["blocks.1.fc"] > w["blocks.2.fc"]
    before, _ = evaluate_stacked(proxy, StackedStats(test))
    after, _ = evaluate_stacked(proxy.with_layer_weights(result.weights), StackedStats(test))
    assert kendall(after, y_test) > kendall(before, y_test) + 0.1
