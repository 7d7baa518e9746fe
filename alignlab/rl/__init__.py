"""The pieces of on-policy RL that are not a loss: rollouts from the policy and the run's monitors.

    rollout.py   generate_rollouts (G completions per prompt, one batched engine call), completion_logps (per-token
                 log-probs and entropies from one training forward, the head chunked), rollout_logps (pi_old, pi_ref)
    monitor.py   RLMonitor and check_alarms: reward hacking, length growth, KL blow-up, entropy collapse and
                 zero-variance batches, from the metric history; plot_rl_curves

The losses are in alignlab/objectives/rl.py, the reward functions in alignlab/rewards, and the recipes that compose
them in alignlab/recipes/grpo.py.
"""

from alignlab.rl.monitor import ALARMS, AlarmConfig, RLMonitor, check_alarms, plot_rl_curves
from alignlab.rl.rollout import Rollout, completion_logps, generate_rollouts, rollout_logps

__all__ = ["ALARMS", "AlarmConfig", "RLMonitor", "Rollout", "check_alarms", "completion_logps", "generate_rollouts",
           "plot_rl_curves", "rollout_logps"]
