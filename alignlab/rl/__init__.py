"""The pieces of on-policy RL that are not a loss: rollouts, the rollout buffer, the run's monitors.

    collect.py   RolloutConfig (the `rollout:` block of every RL config), load_prompt_sets, collect_rollouts: one
                 rollout batch in order -- prompts -> generate -> score -> old/reference log-probs -> advantages
    rollout.py   generate_rollouts (G completions per prompt, one batched engine call: static or paged),
                 completion_logps (per-token log-probs and entropies from one training forward, the head chunked),
                 rollout_logps (pi_old, pi_ref)
    remote.py    ServerRollouts: the same rollouts from an OpenAI-compatible server, the LoRA policy pushed to it
                 through /v1/load_lora_adapter every rollout batch (rollout.backend=server)
    buffer.py    RolloutBuffer: the Trainer's data, micro-batches of the current rollout batch, exact resume
    monitor.py   RLMonitor and check_alarms: reward hacking, length growth, KL blow-up, entropy collapse and
                 zero-variance batches, from the metric history; plot_rl_curves
    run.py       what every RL run does around its steps: the policy, reward functions, held-out accuracy, saving

The losses are in alignlab/objectives/rl.py, the reward functions in alignlab/rewards, the tasks in alignlab/tasks,
and the recipes that compose them in alignlab/recipes/grpo.py and ppo.py.
"""

from alignlab.rl.collect import RolloutConfig, collect_rollouts, load_prompt_sets
from alignlab.rl.monitor import ALARMS, AlarmConfig, RLMonitor, check_alarms, plot_rl_curves
from alignlab.rl.rollout import Rollout, completion_logps, generate_rollouts, rollout_logps

__all__ = ["ALARMS", "AlarmConfig", "RLMonitor", "Rollout", "RolloutConfig", "check_alarms", "collect_rollouts",
           "completion_logps", "generate_rollouts", "load_prompt_sets", "plot_rl_curves", "rollout_logps"]
