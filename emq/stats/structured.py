"""Structured statistics: small matrices per layer or per network that the field's best proxies read (opt-in).

They are computed once per network at statistics time, from the same private copy of
the network and the same batch as the other statistics (`emq.stats.compute`), and
stored compactly: batch x batch, channels x channels, or the distinct activation
patterns, never whole feature maps. None is in the default statistic set; name them in
`--stats`. Matrices are computed in float64 and stored in float32 (their small
eigenvalues and log-determinants would not survive 16-bit storage), and so are
`grad_batch_*`: ZiCo divides one by the other, and 16-bit storage (float16 flushes stds
below 6e-8 to 0, bfloat16 keeps 3 digits) moved its NB201 values by up to 2% (Kendall
with the reference 0.977 on 60 cells, 1.000 in float32). The weight-shaped
`hessian_grad` follows the cache's 16-bit rule like `grad`.

| statistic | entry | shape | what (for which proxy) |
|---|---|---|---|
| `act_codes_kernel` | each activation module (`...relu`) | B x B | agreement counts of the binary codes (output > 0): K = c c^T + (1-c)(1-c)^T, summed over the module's calls (NASWOT) |
| `act_sign_patterns` | each activation module | U x W | the module's distinct sample-wise activation patterns (a unit's B-bit code over the batch), each packed into W = ceil(B / 24) float32 words of 24 bits (SWAP) |
| `act_gram` | each conv/linear layer | B x B | Gram matrix X X^T of the flattened outputs |
| `act_channel_corr` | each conv/linear layer with spatial or token positions | C x C | Pearson correlation of the output's channels over its positions, the network run on the batch's first input alone (MeCo's one input); constant channels correlate 0, with themselves too |
| `act_channel_cov` | each conv/linear layer | C x C | covariance of the output's channels over batch and positions (AZ-NAS expressivity) |
| `grad_batch_mean` | each conv/linear layer | weight | mean over k = 2 mini-batches (the batch's halves) of abs(dL/dW) (ZiCo) |
| `grad_batch_std` | each conv/linear layer | weight | population standard deviation over the same mini-batches of dL/dW (ZiCo) |
| `hessian_grad` | each conv/linear layer | weight | H g, the loss Hessian times the loss gradient g = dL/dW, on the batch (GraSP) |
| `jacobian_corr` | the classifier (last linear layer) | B x B | Pearson correlation of the per-input Jacobians d(sum of logits)/dx (jacov); a constant Jacobian correlates 0 |

Activation modules are those of `ACTIVATION_MODULES` (NASWOT's choice); a network
without any (functional activations) gets `act_codes_kernel` and `act_sign_patterns`
on its conv/linear layers, from their outputs. Channels are dim 1 of a 4-d output
(N, C, H, W) and the last dim of a 3-d one (N, tokens, C); a 2-d output (N, F) has one
position, so it gets no `act_channel_corr`. Activation entries carry no parameters.
Memory per candidate is listed by `emq stats --list` and measured in the README.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

#: Statistics this module computes (registered in the catalogue, `emq.stats`).
STRUCTURED_STATS: tuple[str, ...] = ("act_codes_kernel", "act_sign_patterns", "act_gram", "act_channel_corr",
                                     "act_channel_cov", "grad_batch_mean", "grad_batch_std", "hessian_grad",
                                     "jacobian_corr")
#: Statistics stored on activation-module entries.
ACTIVATION_STATS = ("act_codes_kernel", "act_sign_patterns")
#: Statistics of a conv/linear layer's output on the whole batch.
OUTPUT_STATS = ("act_gram", "act_channel_cov")
GRAD_BATCH_STATS = ("grad_batch_mean", "grad_batch_std")
#: Modules whose outputs give binary codes and sign patterns (NASWOT's and SWAP's activations).
ACTIVATION_MODULES = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.GELU, nn.SiLU, nn.ELU, nn.Hardswish)
#: Mini-batches the batch is split into for `grad_batch_*` (ZiCo's k).
GRAD_BATCHES = 2
#: Bits of a pattern word: integers below 2**24 are exact in float32.
PATTERN_WORD_BITS = 24
#: Batches up to this size pack each pattern into one int64 key while deduplicating.
KEY_BITS = 64

Logits = Callable[[nn.Module, torch.Tensor], torch.Tensor]


def add_structured_stats(net: nn.Module, layers: dict[str, nn.Module], inputs: torch.Tensor, labels: torch.Tensor,
                         names: Sequence[str], out: dict[str, dict[str, torch.Tensor]], params: dict[str, int],
                         flops: dict[str, int], store: Callable[[torch.Tensor], torch.Tensor],
                         logits: Logits) -> dict[str, dict[str, torch.Tensor]]:
    """Return the entries `out` with the structured statistics `names` added (activation entries inserted in forward order).

    `net` is the private network copy statistics run, `layers` its conv/linear layers by
    name, `store` the cache's 16-bit storage rule (used for `hessian_grad`),
    `logits` how the network gives its logits. `params` and `flops` gain the activation
    entries (0 each).
    """
    wanted = [n for n in names if n in STRUCTURED_STATS]
    if not wanted:
        return out
    sequence, activations, outputs = _forward_records(net, layers, inputs, wanted, logits)
    per_entry: dict[str, dict[str, torch.Tensor]] = {}
    for entry, record in activations.items():
        per_entry[entry] = {stat: record[stat] for stat in ACTIVATION_STATS if stat in record}
    for name, values in outputs.items():
        out.setdefault(name, {}).update(values)
    if "act_channel_corr" in wanted:
        for name, corr in single_input_correlations(net, layers, inputs[:1], logits).items():
            out[name]["act_channel_corr"] = corr
    if any(n in GRAD_BATCH_STATS for n in wanted):
        for name, values in gradient_batches(net, layers, inputs, labels, logits).items():
            out[name].update({k: v.cpu() for k, v in values.items() if k in wanted})  # float32: see the docstring
    if "hessian_grad" in wanted:
        for name, hg in hessian_gradient(net, layers, inputs, labels, logits).items():
            out[name]["hessian_grad"] = store(hg)
    if "jacobian_corr" in wanted:
        head = [n for n in sequence if n in layers and isinstance(layers[n], nn.Linear)]
        if head:
            out[head[-1]]["jacobian_corr"] = jacobian_correlation(net, inputs, logits)
    fallback = [e for e in per_entry if e in out]  # no activation modules: the codes sit on the layers themselves
    for entry in fallback:
        out[entry].update(per_entry.pop(entry))
    for entry in per_entry:
        params.setdefault(entry, 0)
        flops.setdefault(entry, 0)
    return _in_forward_order(out, per_entry, sequence)


def _forward_records(net: nn.Module, layers: dict[str, nn.Module], inputs: torch.Tensor, wanted: Sequence[str],
                     logits: Logits) -> tuple[list[str], dict[str, dict[str, torch.Tensor]],
                                              dict[str, dict[str, torch.Tensor]]]:
    """Run one forward pass; return the first-call order of layers and activations, activation records, output records."""
    act_wanted = [s for s in ACTIVATION_STATS if s in wanted]
    out_wanted = [s for s in OUTPUT_STATS if s in wanted]
    modules = {name: m for name, m in net.named_modules() if isinstance(m, ACTIVATION_MODULES)}
    code_sources = modules if modules else layers
    sequence: list[str] = []
    kernels: dict[str, torch.Tensor] = {}
    patterns: dict[str, list[torch.Tensor]] = {}
    outputs: dict[str, dict[str, torch.Tensor]] = {}
    n = inputs.shape[0]

    def seen(name: str) -> None:
        if name not in sequence:
            sequence.append(name)

    def code_hook(name: str):
        def fn(_module: nn.Module, _args: tuple, output: torch.Tensor) -> None:
            seen(name)
            if "act_codes_kernel" in act_wanted:
                kernel = agreement_kernel(output.detach().reshape(n, -1) > 0)
                kernels[name] = kernels[name] + kernel if name in kernels else kernel
            if "act_sign_patterns" in act_wanted:
                patterns.setdefault(name, []).append(distinct_patterns(output.detach().reshape(n, -1).T > 0))
        return fn

    def layer_hook(name: str):
        def fn(_module: nn.Module, _args: tuple, output: torch.Tensor) -> None:
            seen(name)
            if name in outputs or not out_wanted:  # a layer used twice: its first output, as for `act`
                return
            outputs[name] = output_statistics(output.detach(), out_wanted)
        return fn

    handles = [m.register_forward_hook(code_hook(name)) for name, m in code_sources.items() if act_wanted]
    handles += [m.register_forward_hook(layer_hook(name)) for name, m in layers.items()]
    try:
        with torch.no_grad():
            logits(net, inputs)
    finally:
        for h in handles:
            h.remove()
    records: dict[str, dict[str, torch.Tensor]] = {}
    for name in code_sources:
        if name not in sequence or not act_wanted:
            continue
        record = {}
        if name in kernels:
            record["act_codes_kernel"] = kernels[name].to(torch.float32).cpu()
        if name in patterns:  # a module called more than once: the union of its calls' patterns
            found = patterns[name]
            record["act_sign_patterns"] = (found[0] if len(found) == 1 else torch.unique(torch.cat(found), dim=0)).cpu()
        records[name] = record
    return sequence, records, outputs


def agreement_kernel(codes: torch.Tensor) -> torch.Tensor:
    """Return K[i, j] = the number of units on which rows i and j of a boolean (inputs x units) matrix agree (float64).

    K = c c^T + (1 - c)(1 - c)^T = units - a_i - a_j + 2 c c^T with a the rows' counts: one
    product, in float32, exact while a row has fewer than 2**24 units.
    """
    if codes.shape[1] >= 2**24:
        c = codes.to(torch.float64)
        return c @ c.T + (1 - c) @ (1 - c).T
    c = codes.to(torch.float32)
    both = (c @ c.T).to(torch.float64)
    active = c.sum(dim=1).to(torch.float64)
    return codes.shape[1] - active[:, None] - active[None, :] + 2 * both


def distinct_patterns(codes: torch.Tensor) -> torch.Tensor:
    """Return the distinct rows of a 0/1 matrix (units x samples), each packed into ceil(samples / 24) float32 words."""
    units, samples = codes.shape
    words = max(1, math.ceil(samples / PATTERN_WORD_BITS))
    if samples <= KEY_BITS:  # one int64 key per row: a 1-d unique, much faster than unique rows
        rows = _bits(_unique_keys(codes), samples)
    else:
        rows = torch.unique(codes.to(torch.float64), dim=0)
    padded = torch.zeros(rows.shape[0], words * PATTERN_WORD_BITS, dtype=torch.float64, device=codes.device)
    padded[:, :samples] = rows
    weights = 2.0 ** torch.arange(PATTERN_WORD_BITS, dtype=torch.float64, device=codes.device)
    return (padded.reshape(-1, words, PATTERN_WORD_BITS) @ weights).to(torch.float32)


def _unique_keys(codes: torch.Tensor) -> torch.Tensor:
    """Return the distinct rows of a 0/1 matrix with at most 64 columns as int64 keys: (high half - 2**31) * 2**32 +
    low half, each half a 32-bit integer (float64 products are exact there), so no key overflows."""
    x = codes.to(torch.float64)
    powers = 2.0 ** torch.arange(32, dtype=torch.float64, device=codes.device)
    low = (x[:, :32] @ powers[:min(32, x.shape[1])]).to(torch.int64)
    high = (x[:, 32:] @ powers[:max(0, x.shape[1] - 32)]).to(torch.int64) if x.shape[1] > 32 else torch.zeros_like(low)
    return torch.unique((high - 2**31) * 2**32 + low)


def _bits(keys: torch.Tensor, samples: int) -> torch.Tensor:
    """Return the 0/1 rows (float64, `samples` columns) that `_unique_keys` encoded."""
    low = keys & (2**32 - 1)
    high = (keys >> 32) + 2**31
    shifts = torch.arange(32, dtype=torch.int64, device=keys.device)
    bits = torch.cat([(low[:, None] >> shifts) & 1, (high[:, None] >> shifts) & 1], dim=1)
    return bits[:, :samples].to(torch.float64)


def channel_view(output: torch.Tensor) -> torch.Tensor:
    """Return a layer output as (batch, positions, channels): conv (N, C, H, W) -> (N, HW, C); (N, T, C) as is; (N, F) -> (N, 1, F)."""
    if output.dim() == 4:
        return output.flatten(2).transpose(1, 2)
    if output.dim() == 3:
        return output
    return output.reshape(output.shape[0], 1, -1)


def pearson_rows(rows: torch.Tensor) -> torch.Tensor:
    """Return the Pearson correlation of the rows (float64); a constant row correlates 0 with every row, itself too."""
    centered = rows - rows.mean(dim=1, keepdim=True)
    norm = torch.linalg.vector_norm(centered, dim=1, keepdim=True)
    unit = torch.where(norm > 0, centered / torch.where(norm > 0, norm, torch.ones_like(norm)), torch.zeros_like(centered))
    return (unit @ unit.T).clamp(-1.0, 1.0)


def output_statistics(output: torch.Tensor, wanted: Sequence[str]) -> dict[str, torch.Tensor]:
    """Return `act_gram` and `act_channel_cov` of one layer output (those in `wanted`), float32."""
    x = output.to(torch.float64)
    stats: dict[str, torch.Tensor] = {}
    if "act_gram" in wanted:
        flat = x.reshape(x.shape[0], -1)
        stats["act_gram"] = flat @ flat.T
    view = channel_view(x)
    if "act_channel_cov" in wanted:
        samples = view.reshape(-1, view.shape[2])
        centered = samples - samples.mean(dim=0, keepdim=True)
        stats["act_channel_cov"] = centered.T @ centered / samples.shape[0]
    return {k: v.to(torch.float32).cpu() for k, v in stats.items()}


def single_input_correlations(net: nn.Module, layers: dict[str, nn.Module], one: torch.Tensor,
                              logits: Logits) -> dict[str, torch.Tensor]:
    """Return per layer with positions the channel correlation of its output, the network run on one input alone.

    MeCo feeds one input: normalisation layers that use batch statistics then normalise
    over that input's positions, not over the batch.
    """
    out: dict[str, torch.Tensor] = {}

    def hook(name: str):
        def fn(_module: nn.Module, _args: tuple, output: torch.Tensor) -> None:
            view = channel_view(output.detach().to(torch.float64))
            if name not in out and view.shape[1] > 1:
                out[name] = pearson_rows(view[0].T).to(torch.float32).cpu()
        return fn

    handles = [m.register_forward_hook(hook(name)) for name, m in layers.items()]
    try:
        with torch.no_grad():
            logits(net, one)
    finally:
        for h in handles:
            h.remove()
    return out


def hessian_gradient(net: nn.Module, layers: dict[str, nn.Module], inputs: torch.Tensor, labels: torch.Tensor,
                     logits: Logits) -> dict[str, torch.Tensor]:
    """Return per layer H g: the gradient of g . stop_gradient(g) (g = dL/dW of the mean cross-entropy) w.r.t. W."""
    names = list(layers)
    weights = [layers[n].weight for n in names]
    with torch.enable_grad():
        loss = F.cross_entropy(logits(net, inputs), labels)
        grads = torch.autograd.grad(loss, weights, create_graph=True, allow_unused=True)
        live = [i for i, g in enumerate(grads) if g is not None and g.requires_grad]
        hg: list[torch.Tensor | None] = [None] * len(weights)
        if live:
            z = sum((grads[i] * grads[i].detach()).sum() for i in live)
            found = torch.autograd.grad(z, [weights[i] for i in live], allow_unused=True)
            for i, h in zip(live, found):
                hg[i] = h
    return {n: (torch.zeros_like(w) if h is None else h.detach()) for n, w, h in zip(names, weights, hg)}


def gradient_batches(net: nn.Module, layers: dict[str, nn.Module], inputs: torch.Tensor, labels: torch.Tensor,
                     logits: Logits, k: int = GRAD_BATCHES) -> dict[str, dict[str, torch.Tensor]]:
    """Return per layer the mean |dL/dW| and the population std of dL/dW over the batch split into `k` mini-batches."""
    if inputs.shape[0] < k:
        raise ValueError(f"grad_batch_mean/grad_batch_std split the batch into {k} mini-batches; the batch has "
                         f"{inputs.shape[0]} input(s): use --batch-size {k} or more")
    names = list(layers)
    weights = [layers[n].weight for n in names]
    per_batch: list[list[torch.Tensor]] = []
    with torch.enable_grad():
        for x, y in zip(torch.tensor_split(inputs, k), torch.tensor_split(labels, k)):
            loss = F.cross_entropy(logits(net, x), y)
            grads = torch.autograd.grad(loss, weights, allow_unused=True)
            per_batch.append([torch.zeros_like(w) if g is None else g.detach() for w, g in zip(weights, grads)])
    out = {}
    for i, name in enumerate(names):
        stacked = torch.stack([batch[i] for batch in per_batch]).to(torch.float64)
        out[name] = {"grad_batch_mean": stacked.abs().mean(dim=0).to(torch.float32),
                     "grad_batch_std": stacked.std(dim=0, correction=0).to(torch.float32)}
    return out


def jacobian_correlation(net: nn.Module, inputs: torch.Tensor, logits: Logits) -> torch.Tensor:
    """Return the Pearson correlation (B x B, float32) of the per-input Jacobians d(sum of logits)/dx (jacov's matrix)."""
    x = inputs.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        (jac,) = torch.autograd.grad(logits(net, x).sum(), x)
    return pearson_rows(jac.reshape(jac.shape[0], -1).to(torch.float64)).to(torch.float32).cpu()


def _in_forward_order(out: dict[str, dict[str, torch.Tensor]], extra: dict[str, dict[str, torch.Tensor]],
                      sequence: list[str]) -> dict[str, dict[str, torch.Tensor]]:
    """Return `out` with the `extra` entries inserted where they first ran relative to the entries of `out`."""
    position = {name: i for i, name in enumerate(sequence)}
    pending = sorted(extra, key=lambda e: position.get(e, len(sequence)))
    merged: dict[str, dict[str, torch.Tensor]] = {}
    for name, tensors in out.items():
        if name in position:
            while pending and position.get(pending[0], len(sequence)) < position[name]:
                entry = pending.pop(0)
                merged[entry] = extra[entry]
        merged[name] = tensors
    for entry in pending:
        merged[entry] = extra[entry]
    return merged
