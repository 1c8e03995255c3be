"""Program baselines: the literature's proxies that are formulas over the cached statistics (`emq.stats`),
evaluated exactly like discovered programs (#params, FLOPs, bit counts, SynFlow, SNIP, grad-norm, HAWQ, ...)."""
from __future__ import annotations

from emq.baselines.registry import register_baseline


register_baseline("params", doc="number of weights", formula="sum_layers(numel(weight))", trivial=True,
                  separable=True)
register_baseline("flops", doc="multiply-accumulates for one input", formula="sum_layers(mean(flops))", trivial=True,
                  separable=True)
register_baseline("bit_sum", ("mq",), "sum of the layers' weight bit-widths", formula="sum_layers(mean(bits))",
                  trivial=True, separable=True)
register_baseline("bparams", ("mq",), "bit-weighted parameter count (model size in bits)",
                  formula="sum_layers(sum(bits))", trivial=True, separable=True)
# BOPs = MACs x weight bits x activation bits; the activation bits are one constant per
# benchmark, so they are left out (rank correlation is scale free).
register_baseline("bops", ("mq",), "bit operations: MACs x weight bits (x the constant activation bits)",
                  formula="sum_layers(mean(mul(flops, bits)))", trivial=True, separable=True)
register_baseline("synflow", doc="SynFlow (Tanaka et al. 2020): sum |W * d(sum out)/dW| of the |W| network",
                  formula="sum_layers(sum(abs(mul(weight, virtual_grad))))")
register_baseline("snip", doc="SNIP (Lee et al. 2019): sum |W * dL/dW|",
                  formula="sum_layers(sum(abs(mul(weight, grad))))")
register_baseline("grad_norm", doc="sum over layers of the L2 norm of dL/dW", formula="sum_layers(l2(grad))")
# HAWQ (Dong et al. 2019/2020): a layer's sensitivity is its Hessian trace (here the
# mean of the Hutchinson diagonal) times its squared quantization perturbation; a
# larger total perturbation predicts a lower accuracy, hence the negation.
register_baseline("hawq", ("mq",), "HAWQ-style: -sum_layers(mean(Hessian diag) * ||Q(W) - W||^2)",
                  formula="n_neg(sum_layers(s_mul(mean(hessian_diag), sum(square(quant_error)))))")
# Mean Shannon entropy (nats) of the attention rows, averaged over the attention modules: per
# module -sum(p log p) / sum(p), and sum(p) is the number of rows (each row sums to 1).
# Sign: higher entropy scores higher. Attention that concentrates on few tokens (entropy
# collapse, Zhai et al. ICML 2023) marks networks that train badly, so a more uniform
# attention at initialisation is read as the better sign; the tables show which way it ranks.
register_baseline("attn_entropy", ("vit",), "mean entropy of the attention distributions (higher = more uniform)",
                  formula="mean_layers(s_neg(s_div(sum(mul(attn, log_abs(attn))), sum(attn))))")
# The strongest separable trivial predictor: minus the sum over layers of the calibration-loss increase of each
# layer quantized alone at its bits (the per-(layer, bits) table, emq.stats.layer_bits). It costs what HAWQ-v2
# costs (|L| x |B| passes, once), so a separable program must beat it; qloss_calib (one pass per configuration)
# stays the reference of higher cost.
register_baseline("qloss_layer_sum", ("mq",), "minus the sum over layers of lb_loss_increase at the configured bits "
                  "(separable quantized loss)", formula="n_neg(sum_layers(mean(lb_loss_increase)))", trivial=True,
                  separable=True)
