"""Collectives of data-parallel SAE training: each rank holds a full SAE and a share of every minibatch.

Gradients are summed across ranks with the loss written as each rank's share of the union
minibatch's loss, so one step equals a step on the union minibatch whatever the ranks' row counts
(a rank with no rows contributes zeros). Quantities that the single-process trainer takes from a
batch (input scale, ``b_dec``, the residual's spread in the AuxK loss, the logged FVU) come from
per-rank ``(n, mean, centred sum of squares)`` triples gathered and folded in rank order (Chan et al.
1979), which every rank repeats identically, so the SAE on every rank stays bitwise equal.
"""

from __future__ import annotations

import torch


def _dist():
    import torch.distributed as dist

    return dist


def world_of(group) -> int:
    return _dist().get_world_size(group)


def _device_for(group, like: torch.device) -> torch.device:
    return like if _dist().get_backend(group) != "nccl" else torch.device("cuda", torch.cuda.current_device())


def sum_across(tensor: torch.Tensor, group) -> torch.Tensor:
    """``tensor`` summed over the ranks (a new tensor on ``tensor``'s device)."""
    buffer = tensor.detach().to(_device_for(group, tensor.device), copy=True).contiguous()
    _dist().all_reduce(buffer, group=group)
    return buffer.to(tensor.device)


def max_across(value: int, group) -> int:
    buffer = torch.tensor([value], dtype=torch.int64, device=_device_for(group, torch.device("cpu")))
    _dist().all_reduce(buffer, op=_dist().ReduceOp.MAX, group=group)
    return int(buffer.item())


def pooled_moments(parts: list[torch.Tensor], group) -> list[tuple[int, torch.Tensor, torch.Tensor]]:
    """For each ``[n, d]`` tensor of ``parts`` (the same ``n`` on this rank): the union's row count,
    mean and ``Σ‖row − mean‖²`` over every rank's rows, in float64, identical on every rank."""
    n = parts[0].shape[0]
    local = [torch.tensor([float(n)], dtype=torch.float64)]
    for x in parts:
        x = x.detach().double().cpu()
        mean = x.mean(0) if n else torch.zeros(x.shape[1], dtype=torch.float64)
        local += [mean, (x - mean).pow(2).sum().reshape(1)]
    mine = torch.cat(local)
    device = _device_for(group, torch.device("cpu"))
    every = [torch.empty_like(mine, device=device) for _ in range(world_of(group))]
    _dist().all_gather(every, mine.to(device), group=group)
    out = []
    at = 1
    for x in parts:
        d = x.shape[1]
        total, mean, m2 = 0, torch.zeros(d, dtype=torch.float64), torch.zeros((), dtype=torch.float64)
        for row in every:  # rank order
            row = row.cpu()
            m = int(row[0].item())
            if m == 0:
                continue
            other_mean, other_m2 = row[at:at + d], row[at + d]
            delta = other_mean - mean
            both = total + m
            m2 = m2 + other_m2 + delta.square().sum() * (total * m / both)
            mean = mean + delta * (m / both)
            total = both
        out.append((total, mean, m2))
        at += d + 1
    return out


def sum_gradients_(parameters: list[torch.nn.Parameter], group) -> None:
    """Replace every parameter's gradient by its sum over the ranks (one flat all-reduce)."""
    for p in parameters:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    flat = torch.cat([p.grad.reshape(-1) for p in parameters])
    flat = sum_across(flat, group)
    at = 0
    for p in parameters:
        size = p.numel()
        p.grad.copy_(flat[at:at + size].view_as(p.grad))
        at += size
