"""Specification of the structured statistics (emq/stats/structured.py): what each holds, where, and in what form."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from emq.bench.base import Batch
from emq.models.nb201 import nb201
from emq.stats.compute import compute_stats, network_logits, prepare_network
from emq.stats.structured import STRUCTURED_STATS, agreement_kernel, distinct_patterns
from emq.stats import STATS

CELL = (2, 3, 0, 4, 2, 1)  # conv3x3, conv1x1, skip, avgpool, conv3x3, zeroize


@pytest.fixture(scope="module")
def batch() -> Batch:
    g = torch.Generator().manual_seed(0)
    return Batch(torch.randn(6, 3, 32, 32, generator=g), torch.randint(0, 10, (6,), generator=g), "gaussian", 0)


@pytest.fixture(scope="module")
def stats(batch, one_thread):
    return compute_stats(nb201(CELL), batch, None, STRUCTURED_STATS, store_dtype=torch.float16)


def _outputs(net, inputs, kind):
    found: dict[str, list[torch.Tensor]] = {}
    handles = [m.register_forward_hook(lambda m, a, o, name=name: found.setdefault(name, []).append(o.detach()))
               for name, m in net.named_modules() if isinstance(m, kind)]
    with torch.no_grad():
        network_logits(net, inputs)
    for h in handles:
        h.remove()
    return found


def test_every_structured_statistic_is_in_the_catalogue():
    assert set(STRUCTURED_STATS) <= set(STATS)


def test_activation_entries_sit_in_forward_order_before_the_layer_they_feed(stats):
    names = list(stats.layers)
    assert names.index("stage1.cell0.edge0to1.relu") + 1 == names.index("stage1.cell0.edge0to1.conv")
    assert names[-2:] == ["lastact.relu", "classifier"]
    assert stats.params["stage1.cell0.edge0to1.relu"] == 0


def test_the_codes_kernel_counts_agreeing_units_per_relu(stats, batch):
    net = prepare_network(nb201(CELL), None, act_bits=None)
    outputs = _outputs(net, batch.inputs, torch.nn.ReLU)
    codes = (outputs["stage2.cell3.edge0to2.relu"][0].reshape(6, -1) > 0).double()
    expected = codes @ codes.T + (1 - codes) @ (1 - codes).T
    kernel = stats.layers["stage2.cell3.edge0to2.relu"]["act_codes_kernel"]
    assert kernel.dtype == torch.float32
    assert torch.equal(kernel.double(), expected)


def test_sign_patterns_hold_each_distinct_unit_pattern_once(stats, batch):
    net = prepare_network(nb201(CELL), None, act_bits=None)
    out = _outputs(net, batch.inputs, torch.nn.ReLU)["stage1.cell2.edge1to3.relu"][0]
    units = (out.reshape(6, -1) > 0).T.long()
    words = stats.layers["stage1.cell2.edge1to3.relu"]["act_sign_patterns"]
    assert words.shape == (torch.unique(units, dim=0).shape[0], 1)
    decoded = torch.stack([(words[:, 0].long() >> i) & 1 for i in range(6)], dim=1)
    assert torch.equal(torch.unique(decoded, dim=0), torch.unique(units, dim=0))


@pytest.mark.parametrize("samples", [1, 16, 33, 64, 70])
def test_pattern_packing_is_exact_for_any_batch(samples):
    codes = torch.rand(500, samples, generator=torch.Generator().manual_seed(samples)) > 0.8
    words = distinct_patterns(codes)
    assert words.shape == (torch.unique(codes.long(), dim=0).shape[0], -(-samples // 24))
    assert float(words.max()) < 2**24  # exact in float32


def test_agreement_kernel_equals_the_two_product_definition():
    codes = torch.rand(7, 300, generator=torch.Generator().manual_seed(1)) > 0.4
    c = codes.double()
    assert torch.equal(agreement_kernel(codes), c @ c.T + (1 - c) @ (1 - c).T)


def test_channel_correlation_is_of_the_first_input_run_alone(stats, batch):
    net = prepare_network(nb201(CELL), None, act_bits=None)
    out = _outputs(net, batch.inputs[:1], torch.nn.Conv2d)["stage3.cell1.edge0to1.conv"][0][0]
    expected = np.corrcoef(out.reshape(out.shape[0], -1).double().numpy())
    got = stats.layers["stage3.cell1.edge0to1.conv"]["act_channel_corr"]
    assert got.shape == (64, 64) and got.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), np.nan_to_num(expected), atol=1e-5)
    assert "act_channel_corr" not in stats.layers["classifier"]  # one position: no correlation


def test_gram_and_covariance_are_of_the_whole_batch(stats, batch):
    net = prepare_network(nb201(CELL), None, act_bits=None)
    out = _outputs(net, batch.inputs, torch.nn.Conv2d)["stem.conv"][0].double()
    flat = out.reshape(6, -1)
    torch.testing.assert_close(stats.layers["stem.conv"]["act_gram"].double(), flat @ flat.T, rtol=1e-5, atol=1e-3)
    samples = out.permute(0, 2, 3, 1).reshape(-1, 16)
    cov = np.cov(samples.numpy().T, bias=True)
    np.testing.assert_allclose(stats.layers["stem.conv"]["act_channel_cov"].numpy(), cov, rtol=1e-4, atol=1e-6)


def test_mini_batch_gradients_are_mean_abs_and_population_std_over_the_halves_kept_in_float32(stats, batch):
    net = prepare_network(nb201(CELL), None, act_bits=None)
    w = net.get_submodule("classifier").weight
    grads = []
    for x, y in zip(torch.tensor_split(batch.inputs, 2), torch.tensor_split(batch.labels, 2)):
        grads.append(torch.autograd.grad(F.cross_entropy(network_logits(net, x), y), w)[0])
    g = torch.stack(grads)
    entry = stats.layers["classifier"]
    # float32 under 16-bit storage: ZiCo's ratio of the two needs their small values (a std of 1e-9 is no 0)
    assert entry["grad_batch_mean"].dtype == entry["grad_batch_std"].dtype == torch.float32
    torch.testing.assert_close(entry["grad_batch_mean"], g.abs().mean(0), rtol=1e-5, atol=0)
    torch.testing.assert_close(entry["grad_batch_std"], g.std(0, correction=0), rtol=1e-4, atol=1e-12)


def test_the_jacobian_correlation_sits_on_the_classifier(stats):
    corr = stats.layers["classifier"]["jacobian_corr"]
    assert corr.shape == (6, 6)
    torch.testing.assert_close(torch.diagonal(corr), torch.ones(6))
    assert sum("jacobian_corr" in d for d in stats.layers.values()) == 1


def test_the_hessian_gradient_product_matches_autograd(stats, batch):
    net = prepare_network(nb201(CELL), None, act_bits=None)
    weights = [m.weight for m in net.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    g = torch.autograd.grad(F.cross_entropy(network_logits(net, batch.inputs), batch.labels), weights,
                            create_graph=True)
    hg = torch.autograd.grad(sum((a * a.detach()).sum() for a in g), weights[-1])[0]
    torch.testing.assert_close(stats.layers["classifier"]["hessian_grad"].float(), hg, rtol=2e-2, atol=1e-6)


def test_structured_statistics_leave_the_model_unchanged(batch):
    model = nb201(CELL)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    compute_stats(model, batch, None, STRUCTURED_STATS)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_a_network_without_activation_modules_codes_its_layer_outputs():
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 3))
    batch = Batch(torch.randn(5, 4), torch.randint(0, 3, (5,)), "gaussian", 0)
    stats = compute_stats(net, batch, None, ("act_codes_kernel",))
    assert list(stats.layers) == ["0", "1"]
    assert stats.layers["0"]["act_codes_kernel"].shape == (5, 5)


def test_stats_list_gives_each_structured_statistic_its_memory_per_candidate(run):
    result = run("stats", "--list")
    assert result.exit_code == 0
    lines = {line.split()[0]: line for line in result.output.splitlines() if line.strip()}
    for name in STRUCTURED_STATS:
        assert "KB" in lines[name] or "MB" in lines[name], name


def test_emq_ops_lists_the_matrix_cross_layer_and_rank_ops_with_signatures(run):
    result = run("ops")
    assert result.exit_code == 0
    for line in ("logdet               T -> S", "sum_layers_t         T -> T", "n_rank_add           N, N -> N",
                 "sum_positions        T -> T"):
        assert line in result.output
