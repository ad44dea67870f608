"""How far each registered loss term moves under bf16 autocast, against float32.

Usage (with the package installed, ``pip install -e .``, or ``PYTHONPATH=.``):
    python scripts/loss_precision.py               # P=16, K=4, D=2048, every term
    python scripts/loss_precision.py --dim 512 --triplet-mining semi_hard

Each term is built through its factory from the default config, with the mining and
margins of the defaults (``--triplet-mining`` changes the triplet's). The same
float32 inputs go through the term twice: once in plain float32, once inside
``torch.autocast("cpu", dtype=torch.bfloat16)``, as training does on a GPU with
``SOLVER.AMP``. The table gives the relative difference of the value,
``|v_amp - v_32| / |v_32|``, and of the gradients with respect to the inputs and to
the term's own parameters, ``||g_amp - g_32|| / ||g_32||``. The last column is the
value's relative difference when the inputs themselves arrive rounded to bf16, as
a backbone under autocast hands them over: what is left that the term cannot undo.

Inputs have an identity structure: features are ``relu(0.3 * c_pid + noise)`` (the
non-negative pooled feature a ResNet gives, ``feat``), its per-dimension standardised
copy is ``neck_feat``, and ``logits`` come from a random linear classifier on it.
"""

from __future__ import annotations

import argparse

import torch

from reid.config import load_cfg
from reid.losses import LOSSES


def make_inputs(num_ids: int, num_instances: int, dim: int, seed: int) -> tuple:
    """``({"feat", "neck_feat": (B, dim), "logits": (B, num_ids)}, pids (B,))``."""
    gen = torch.Generator().manual_seed(seed)
    pids = torch.arange(num_ids).repeat_interleave(num_instances)
    centers = torch.randn(num_ids, dim, generator=gen)
    feat = (0.3 * centers[pids] + torch.randn(len(pids), dim, generator=gen)).relu()
    neck_feat = (feat - feat.mean(0)) / feat.std(0).clamp(min=1e-6)
    classifier = torch.randn(num_ids, dim, generator=gen) / dim**0.5
    logits = 4.0 * neck_feat @ classifier.t() + 4.0 * torch.nn.functional.one_hot(pids)
    return {"feat": feat, "neck_feat": neck_feat, "logits": logits}, pids


def _run(
    term: torch.nn.Module, inputs: torch.Tensor, pids: torch.Tensor, amp: bool, dtype=torch.float32
) -> tuple:
    """(value, input gradient, parameter gradients) of one call, in float64 copies."""
    term.zero_grad(set_to_none=True)
    x = inputs.detach().to(dtype, copy=True).requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
        value = term(x, pids)
    value.float().backward()
    params = [p.grad.double().flatten() for p in term.parameters() if p.grad is not None]
    param_grad = torch.cat(params) if params else None
    return value.double().item(), x.grad.double(), param_grad


def _relative(new: torch.Tensor | None, ref: torch.Tensor | None) -> str:
    if ref is None:
        return "-"
    return f"{(new - ref).norm().item() / max(ref.norm().item(), 1e-30):.1e}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ids", type=int, default=16, help="P identities per batch")
    parser.add_argument("--instances", type=int, default=4, help="K images per identity")
    parser.add_argument("--dim", type=int, default=2048, help="feature dimension D")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--triplet-mining", default="hard", help="LOSS.TRIPLET_MINING")
    args = parser.parse_args()

    cfg = load_cfg(opts=["LOSS.TRIPLET_MINING", args.triplet_mining])
    outputs, pids = make_inputs(args.ids, args.instances, args.dim, args.seed)
    print(f"P={args.ids} K={args.instances} D={args.dim}, bf16 autocast vs float32 (CPU)")
    header = ("term", "input", "value fp32", "value", "grad in", "grad par", "bf16 input")
    print("{:<18}{:<11}{:>12}{:>10}{:>10}{:>10}{:>12}".format(*header))
    for name in LOSSES.names():
        torch.manual_seed(args.seed)  # the same parameters (centers, class weights) each run
        term = LOSSES.get(name)(cfg, args.ids, args.dim, 1.0)
        inputs = outputs[term.input]
        ref_value, ref_grad, ref_param = _run(term, inputs, pids, amp=False)
        value, grad, param = _run(term, inputs, pids, amp=True)
        rounded_value = _run(term, inputs, pids, amp=True, dtype=torch.bfloat16)[0]
        rel_value = abs(value - ref_value) / max(abs(ref_value), 1e-30)
        rel_rounded = abs(rounded_value - ref_value) / max(abs(ref_value), 1e-30)
        print(
            f"{name:<18}{term.input:<11}{ref_value:>12.5g}{rel_value:>10.1e}"
            f"{_relative(grad, ref_grad):>10}{_relative(param, ref_param):>10}{rel_rounded:>12.1e}"
        )


if __name__ == "__main__":
    main()
