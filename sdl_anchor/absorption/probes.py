"""Probes for the real-model absorption metric: the ground-truth concept probe and the choice of main latents.

The ground-truth probe follows SAEBench's ``absorption_first_letter`` (Chanin et al. 2024) so results are
comparable: one linear layer, one-vs-rest binary cross-entropy with ``pos_weight = negatives / positives``
per class, Adam (lr 1e-2, weight decay 1e-4) decayed exponentially to 1e-5 over 50 epochs of batches of
64; a class's F1 counts ``logit > 0`` on held-out words.

The main latents differ from SAEBench on purpose. SAEBench ranks latents by the weights of an L1 probe on
raw activations, which depends on each latent's scale and, on planted cases, prefers a child latent
(perfectly predictive for its few words, large activations) over the parent's own latent. Here latents are
chosen from *firing* alone, so rescaling a latent changes nothing:

1. greedily, the latent whose firing, OR-ed with the latents already chosen, best predicts the class on
   the training words (F1), up to ``max_k``;
2. for k = 1, 2, ... a balanced logistic regression on the standardised activations of the first k chosen
   latents is scored by test F1; k grows while F1 rises by more than ``f1_jump`` (SAEBench's 0.03), and
   the main latents are the last accepted set.

A child latent covers only its own words, so it adds little recall and is not taken as a main latent,
while a genuinely split parent (several latents each covering part of the class) is.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


def f1_scores(predicted: torch.Tensor, actual: torch.Tensor) -> torch.Tensor:
    """F1 per column of boolean ``[N, C]`` predictions against ``[N, C]`` truths (0 where undefined)."""
    predicted, actual = predicted.float(), actual.float()
    true_positives = (predicted * actual).sum(0)
    return 2 * true_positives / (predicted.sum(0) + actual.sum(0)).clamp(min=1)


@torch.enable_grad()
def train_concept_probe(
    x: torch.Tensor,
    labels: torch.Tensor,
    n_classes: int,
    *,
    epochs: int = 50,
    batch_size: int = 64,
    lr: float = 1e-2,
    final_lr: float = 1e-5,
    weight_decay: float = 1e-4,
    seed: int = 0,
) -> torch.nn.Linear:
    """A one-vs-rest linear probe ``[d] -> [n_classes]`` (module docstring), trained on ``x [N, d]``,
    ``labels [N]`` in ``0..n_classes-1``."""
    generator = torch.Generator().manual_seed(seed)
    probe = torch.nn.Linear(x.shape[1], n_classes, device=x.device)
    with torch.no_grad():  # a seeded initialisation, independent of the global RNG
        bound = 1 / x.shape[1] ** 0.5
        probe.weight.copy_((torch.rand(probe.weight.shape, generator=generator) * 2 - 1) * bound)
        probe.bias.copy_((torch.rand(probe.bias.shape, generator=generator) * 2 - 1) * bound)
    targets = F.one_hot(labels, n_classes).float()
    positives = targets.sum(0)
    pos_weight = (x.shape[0] - positives) / positives.clamp(min=1)
    optimizer = torch.optim.Adam(probe.parameters(), lr=lr, weight_decay=weight_decay)
    gamma = (final_lr / lr) ** (1 / epochs)
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma)
    for _ in range(epochs):
        order = torch.randperm(x.shape[0], generator=generator).to(x.device)
        for start in range(0, x.shape[0], batch_size):
            rows = order[start : start + batch_size]
            loss = F.binary_cross_entropy_with_logits(probe(x[rows]), targets[rows], pos_weight=pos_weight)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        scheduler.step()
    probe.requires_grad_(False)
    return probe


@torch.enable_grad()
def _logistic_f1(
    train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor, steps: int = 200
) -> float:
    """Test F1 of a class-balanced logistic regression on standardised features (L-BFGS, light L2)."""
    mean, std = train_x.mean(0), train_x.std(0).clamp(min=1e-6)
    a, b = (train_x - mean) / std, (test_x - mean) / std
    weight = torch.zeros(a.shape[1], device=a.device, requires_grad=True)
    bias = torch.zeros((), device=a.device, requires_grad=True)
    positives = train_y.float().mean().clamp(1e-6, 1 - 1e-6)
    sample_weight = torch.where(train_y, 0.5 / positives, 0.5 / (1 - positives))
    optimizer = torch.optim.LBFGS([weight, bias], max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        logits = a @ weight + bias
        loss = (
            sample_weight * F.binary_cross_entropy_with_logits(logits, train_y.float(), reduction="none")
        ).mean()
        loss = loss + 1e-4 * weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        predicted = (b @ weight + bias) > 0
    return float(f1_scores(predicted[:, None], test_y[:, None])[0])


@dataclass
class MainLatents:
    """The latents that carry one class, and the test F1 at each accepted k."""

    latents: list[int]
    f1_by_k: list[float]


@torch.no_grad()
def greedy_firing_latents(fires: torch.Tensor, actual: torch.Tensor, max_k: int, pool: int = 64) -> list[int]:
    """Up to ``max_k`` latents (columns of boolean ``fires [N, L]``), each the one whose firing OR-ed with
    those before best predicts ``actual [N]`` (F1); candidates are the ``pool`` best latents alone."""
    alone = f1_scores(fires, actual[:, None].expand_as(fires))
    candidates = torch.argsort(alone, descending=True)[:pool]
    candidates = candidates[alone[candidates] > 0]
    chosen: list[int] = []
    covered = torch.zeros_like(actual)
    for _ in range(min(max_k, candidates.numel())):
        trial = covered[:, None] | fires[:, candidates]
        scores = f1_scores(trial, actual[:, None].expand_as(trial))
        if chosen:
            scores[torch.isin(candidates, torch.tensor(chosen, device=candidates.device))] = -1.0
        best = int(scores.argmax())
        chosen.append(int(candidates[best]))
        covered = trial[:, best]
    return chosen


def select_main_latents(
    train_acts: torch.Tensor,
    train_y: torch.Tensor,
    test_acts: torch.Tensor,
    test_y: torch.Tensor,
    max_k: int = 10,
    f1_jump: float = 0.03,
) -> MainLatents:
    """The main latents of one class (module docstring): ``*_acts [N, d_sae]`` latent activations,
    ``*_y [N]`` booleans."""
    order = greedy_firing_latents(train_acts > 0, train_y, max_k)
    accepted: list[int] = []
    f1_by_k: list[float] = []
    previous = -1.0
    for k in range(1, len(order) + 1):
        chosen = order[:k]
        f1 = _logistic_f1(train_acts[:, chosen], train_y, test_acts[:, chosen], test_y)
        if f1 <= previous + f1_jump:
            break
        accepted, previous = chosen, f1
        f1_by_k.append(f1)
    return MainLatents(accepted, f1_by_k)
