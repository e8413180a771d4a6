"""PPO's critic over chunks (``algorithm: ppo``): a value head on the policy's features, and GAE.

The critic reads what the policy computes anyway: the action queries' last hidden states, averaged
(``VLAPolicy.forward(..., features=True)``), detached, so the value loss trains the head and leaves the
policy's representation to the policy loss. Each chunk of a trajectory is one step of the
decision process: the reward is 0 on every chunk but the last, which carries the episode's
(``success_reward`` for a success, else 0; an episode cut by ``rollout_max_steps`` ends there as a
failure, as GRPO counts it). Advantages are GAE over a trajectory's chunks,

    delta_t = r_t + gamma V(s_{t+1}) - V(s_t)   (V after the last chunk = 0)
    A_t = delta_t + gamma lambda A_{t+1},       returns R_t = A_t + V(s_t),

normalised over the batch's chunks, and every executed token of a chunk takes its chunk's
advantage in the same clipped loss as GRPO. The head trains on 0.5 (V - R)^2 with its own AdamW
(``critic_lr``), one step per policy step, on the same mini-batches.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

EPS = 1e-8


class ValueHead(nn.Module):
    """V(s) from the policy's features (B, hidden) -> (B,)."""

    def __init__(self, hidden: int, width: int = 256):
        super().__init__()
        self.net = nn.Sequential(nn.LayerNorm(hidden), nn.Linear(hidden, width), nn.GELU(), nn.Linear(width, 1))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features.float()).squeeze(-1)


def gae(rewards: np.ndarray, values: np.ndarray, gamma: float, lam: float) -> tuple[np.ndarray, np.ndarray]:
    """One trajectory's advantages and returns over its chunks (``rewards``, ``values``: (T,)), the
    trajectory ending after its last chunk."""
    adv = np.zeros(len(rewards), dtype=np.float64)
    running = 0.0
    for t in reversed(range(len(rewards))):
        next_value = values[t + 1] if t + 1 < len(rewards) else 0.0
        running = rewards[t] + gamma * next_value - values[t] + gamma * lam * running
        adv[t] = running
    return adv, adv + values


def chunk_advantages(traj: np.ndarray, last_reward: dict[int, float], values: np.ndarray, gamma: float,
                     lam: float) -> tuple[np.ndarray, np.ndarray, float]:
    """Per chunk of a batch (``traj``: each chunk's trajectory, chunks in order within one): GAE
    advantages normalised over the batch, the returns, and the explained variance of the values."""
    adv = np.zeros(len(traj))
    ret = np.zeros(len(traj))
    for t in np.unique(traj):
        rows = np.flatnonzero(traj == t)
        rewards = np.zeros(len(rows))
        rewards[-1] = last_reward[int(t)]
        adv[rows], ret[rows] = gae(rewards, values[rows], gamma, lam)
    explained = 1.0 - float(np.var(ret - values) / (np.var(ret) + EPS))
    return (adv - adv.mean()) / (adv.std() + EPS), ret, explained


@torch.no_grad()
def chunk_values(critic: ValueHead, model, policy, observations: list[dict], rows: int = 64) -> np.ndarray:
    """V of every observation, ``rows`` per forward pass."""
    out = []
    for start in range(0, len(observations), rows):
        _, features = model(**policy.inputs(observations[start : start + rows]), features=True)
        out.append(critic(features).cpu().numpy())
    return np.concatenate(out).astype(np.float64) if out else np.zeros(0)


def value_loss(critic: ValueHead, features: torch.Tensor, returns: torch.Tensor) -> torch.Tensor:
    """0.5 (V - R)^2, summed over the rows (the caller divides by the mini-batch's size)."""
    return 0.5 * ((critic(features.detach()) - returns) ** 2).sum()


def critic_tensors(critic: ValueHead, opt: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """The critic's weights and AdamW state, for the run's checkpoint (``critic.*``)."""
    out = {f"critic.w.{k}": v.detach().cpu() for k, v in critic.state_dict().items()}
    for i, p in enumerate(critic.parameters()):
        for k, v in opt.state.get(p, {}).items():
            out[f"critic.opt.{i}.{k}"] = v.detach().cpu() if torch.is_tensor(v) else torch.tensor(v)
    return out


def load_critic(critic: ValueHead, opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor]) -> None:
    """Resume the critic from :func:`critic_tensors`."""
    critic.load_state_dict({k[len("critic.w."):]: v for k, v in tensors.items() if k.startswith("critic.w.")})
    params = list(critic.parameters())
    for key, v in tensors.items():
        if key.startswith("critic.opt."):
            i, name = key[len("critic.opt."):].split(".", 1)
            opt.state[params[int(i)]][name] = v.to(params[int(i)].device)
