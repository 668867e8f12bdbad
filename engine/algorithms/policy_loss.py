"""Policy losses: the importance ratio at token or sequence level
(engine.algorithms.RATIO_LEVELS) and the PPO clipped surrogate built on it
(engine.algorithms.POLICY_LOSSES 'ppo'; algorithms.md §0.1), and AReaL's decoupled loss
('decoupled_ppo': behaviour and proximal policies kept apart, §4b) on top of it. A policy
loss is a callable the training backend calls once per micro-batch with the model's
logits; besides LOSS_STATISTICS it may return further per-token sums under metric names,
which the training backend reports as means over trained tokens.

Shapes: B sequences in a (micro-)batch, T token positions, V vocabulary entries.
`mask` [B, T] is 1.0 on generated (trained) tokens and 0.0 on prompt and padding.
"""

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from engine.algorithms import RATIO_LEVELS
from engine.algorithms.aggregation import Counts, aggregate
from engine.algorithms.kl import kl_estimate

if TYPE_CHECKING:
    from engine.spec import AlgorithmSpec
    from engine.training.collate import Collated


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """log softmax(logits / T)[target] — the same convention as the generation backends.

    logits: [B, T, V]; targets: [B, T] long. Returns [B, T] float32.
    """
    logprobs = torch.log_softmax(logits.float() / temperature, dim=-1)
    return logprobs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)


def entropy_from_logits(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Entropy of softmax(logits / T) at each position. logits [B, T, V] → [B, T]."""
    logprobs = torch.log_softmax(logits.float() / temperature, dim=-1)
    return -(logprobs.exp() * logprobs).sum(dim=-1)


def masked_sequence_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over each row's masked tokens: [B, T] → [B] (0 for a row with none)."""
    return (values * mask).sum(dim=-1) / mask.sum(dim=-1).clamp(min=1.0)


def token_log_ratio(logprobs: torch.Tensor, old_logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """PPO, GRPO: log r_t = log π_θ(y_t) − log π_old(y_t), [B, T]."""
    return logprobs - old_logprobs


def sequence_log_ratio(logprobs: torch.Tensor, old_logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """GSPO, in its GSPO-token form as verl and slime write it, [B, T]:

        log s_t = log π_θ(y_t) − sg[log π_θ(y_t)] + sg[mean_t(log π_θ − log π_old)]

    Its value is the same for every token of a sequence, the length-normalised sequence
    ratio log s_i = (1/|y_i|) Σ_t log r_t; its gradient is that of log π_θ(y_t), so with a
    per-sequence mean over tokens the loss's gradient is exactly that of the paper's
    sequence-level objective (tested).
    """
    sequence = masked_sequence_mean(logprobs - old_logprobs, mask).detach()
    return logprobs - logprobs.detach() + sequence[:, None]


def log_importance_ratio(
    logprobs: torch.Tensor, old_logprobs: torch.Tensor, mask: torch.Tensor, level: str
) -> torch.Tensor:
    """log r for every token at the named ratio level (RATIO_LEVELS), [B, T]."""
    if level not in RATIO_LEVELS:
        raise ValueError(RATIO_LEVELS.unknown_message(level))
    return RATIO_LEVELS.load(level)(logprobs, old_logprobs, mask)


@dataclass
class PPOTerms:
    """Per-token pieces of the clipped surrogate, all [B, T]."""

    loss: torch.Tensor  # ℓ_t = −min(r·A, clip(r, 1−ε_low, 1+ε_high)·A), dual-clipped if asked
    ratio: torch.Tensor  # r_t
    clipped_low: torch.Tensor  # bool: A < 0 and r < 1 − ε_low (the lower clip binds)
    clipped_high: torch.Tensor  # bool: A > 0 and r > 1 + ε_high (the upper clip binds)
    clipped_dual: torch.Tensor  # bool: A < 0 and the dual clip's cap c·|A| binds
    out_of_region: torch.Tensor  # bool: r outside [1 − ε_low, 1 + ε_high], whatever A's sign


def ppo_clipped(
    log_ratio: torch.Tensor,
    advantages: torch.Tensor,
    clip_eps_low: float,
    clip_eps_high: float,
    dual_clip_c: float = 0.0,
) -> PPOTerms:
    """The PPO clipped token surrogate (algorithms.md §0.1), to be minimised.

    log_ratio (with grad): [B, T], from `log_importance_ratio`; advantages: [B] (one per
    sequence, broadcast over its tokens) or [B, T]. "Clipped" means the branch min()
    picks is the clipped one with a different value, i.e. the token's gradient is cut
    off. With dual_clip_c = c > 1, a token with A < 0 has its loss capped at c·|A|
    (verl's clip_ratio_c): a huge ratio on a bad token can no longer blow the loss up.
    """
    if advantages.dim() == 1:
        advantages = advantages[:, None]
    ratio = torch.exp(log_ratio)
    unclipped = ratio * advantages
    clipped = torch.clamp(ratio, 1 - clip_eps_low, 1 + clip_eps_high) * advantages
    loss = -torch.minimum(unclipped, clipped)
    dual = torch.zeros_like(loss, dtype=torch.bool)
    if dual_clip_c:
        cap = -dual_clip_c * advantages  # = c·|A| where A < 0
        dual = (advantages < 0) & (loss > cap)
        loss = torch.where(dual, cap.expand_as(loss), loss)
    with torch.no_grad():
        low = (advantages < 0) & (ratio < 1 - clip_eps_low)
        high = (advantages > 0) & (ratio > 1 + clip_eps_high)
        region = (ratio < 1 - clip_eps_low) | (ratio > 1 + clip_eps_high)
    return PPOTerms(
        loss=loss, ratio=ratio, clipped_low=low, clipped_high=high, clipped_dual=dual.detach(), out_of_region=region
    )


# The statistics a policy loss sums over a mini-batch's micro-batches (token sums, and
# the policy-gradient loss as its share of the mini-batch's).
LOSS_STATISTICS = ("pg_loss", "entropy", "ppo_kl", "low", "high", "dual", "region", "tokens")


class PPOLoss:
    """The clipped surrogate of the algorithm's ratio level and clip range, aggregated
    by its mode, minus the entropy bonus, plus β·KL when the KL goes in the loss."""

    def __init__(self, algorithm: "AlgorithmSpec", temperature: float, max_new_tokens: int):
        self.algorithm = algorithm
        self.temperature = temperature
        self.max_new_tokens = max_new_tokens  # seq-mean-token-sum-norm's constant

    @property
    def needs_reference(self) -> bool:
        return self.algorithm.kl_placement != "off"

    def token_weights(self, batch: "Collated") -> tuple[torch.Tensor | None, dict[str, float]]:
        """Per-token weights of the surrogate ([B, T], detached) and their statistics:
        none for PPO (DecoupledPPOLoss weights each token by π_prox / π_behav)."""
        return None, {}

    def __call__(
        self, logits: torch.Tensor, targets: torch.Tensor, batch: "Collated", num_seqs: int, num_tokens: int
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """The micro-batch's share of its mini-batch's loss (to backpropagate) and its
        statistics. logits [B, T, V] predict targets [B, T] (already shifted)."""
        algo, mask = self.algorithm, batch.mask
        logprobs = token_logprobs(logits, targets, self.temperature)
        log_ratio = log_importance_ratio(logprobs, batch.old_logprobs, mask, algo.ratio_level)
        terms = ppo_clipped(log_ratio, batch.advantages, algo.clip_eps_low, algo.clip_eps_high, algo.dual_clip_c)
        counts = Counts(num_seqs=num_seqs, num_tokens=num_tokens, norm_len=self.max_new_tokens)

        def agg(values: torch.Tensor) -> torch.Tensor:
            return aggregate(values, mask, algo.aggregation, counts)

        weights, weight_statistics = self.token_weights(batch)
        pg_loss = agg(terms.loss if weights is None else terms.loss * weights)
        loss = pg_loss
        entropy = entropy_from_logits(logits if algo.entropy_coef else logits.detach(), self.temperature)
        if algo.entropy_coef:
            loss = loss - algo.entropy_coef * agg(entropy)
        if algo.kl_placement == "loss":
            loss = loss + algo.kl_coef * agg(kl_estimate(logprobs, batch.ref_logprobs, algo.kl_estimator))
        trained = mask > 0
        statistics = {
            "pg_loss": float(pg_loss.detach()),
            "entropy": float((entropy.detach() * mask).sum()),
            "ppo_kl": float(((batch.old_logprobs - logprobs.detach()) * mask).sum()),
            "low": float((terms.clipped_low & trained).sum()),
            "high": float((terms.clipped_high & trained).sum()),
            "dual": float((terms.clipped_dual & trained).sum()),
            "region": float((terms.out_of_region & trained).sum()),
            "tokens": float(mask.sum()),
            **weight_statistics,
        }
        return loss, statistics


class DecoupledPPOLoss(PPOLoss):
    """AReaL's decoupled PPO objective (algorithms.md §4b), to be minimised per token:

        ℓ_t = w_t · ℓ^PPO_t(u_t),   u_t = π_θ / π_prox,   w_t = sg[π_prox / π_behav]

    π_behav is the log-prob the generation backend sampled the token with (whatever
    version that was), π_prox the trainer's recomputation with the weights at the start
    of the step (`batch.old_logprobs`). The clip, dual clip and ratio level of the
    algorithm apply to u. A token whose w exceeds `behav_weight_cap` is masked (w = 0;
    AReaL's `behav_imp_weight_cap`) or clamped to the cap; the aggregation's
    denominators keep counting it, as AReaL's do. With π_prox = π_behav (nothing stale)
    every w is 1 and this is the ppo loss exactly.

    Besides PPO's statistics it sums, per trained token, the weight after the cap, the
    tokens the cap touched and log π_prox − log π_behav, reported as
    off_policy/behav_weight_mean, off_policy/behav_capped_ratio and off_policy/behav_kl.
    """

    def token_weights(self, batch: "Collated") -> tuple[torch.Tensor | None, dict[str, float]]:
        algo, mask = self.algorithm, batch.mask
        weights, capped, behav_kl = behaviour_weights(
            batch.old_logprobs, batch.behaviour_logprobs, mask, algo.behav_weight_cap, algo.behav_weight_action
        )
        return weights, {
            "off_policy/behav_weight_mean": float((weights * mask).sum()),
            "off_policy/behav_capped_ratio": float((capped & (mask > 0)).sum()),
            "off_policy/behav_kl": float((behav_kl * mask).sum()),
        }


def behaviour_weights(
    prox_logprobs: torch.Tensor, behav_logprobs: torch.Tensor, mask: torch.Tensor, cap: float, action: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The decoupled loss's detached importance weights w = π_prox / π_behav, [B, T], after
    the cap (`action` mask: w = 0 above it; clamp: w = cap), with where the cap bit
    (bool [B, T]) and log π_prox − log π_behav. Untrained positions get w = 0."""
    behav_kl = (prox_logprobs - behav_logprobs).detach() * mask
    weights = torch.exp(behav_kl)
    capped = weights > cap
    if action == "mask":
        weights = torch.where(capped, torch.zeros_like(weights), weights)
    else:
        weights = torch.clamp(weights, max=cap)
    return weights * mask, capped, behav_kl
