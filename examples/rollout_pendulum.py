"""Roll an MPC policy out in the Gymnasium pendulum, in receding horizon with warm starts.

At every step the policy plans T controls from the observation, the environment applies the
first, and the next plan starts from the previous one shifted by one step. The policy's
parameters come from examples/bc_pendulum.py (or are the true ones if that file is absent).

    python examples/rollout_pendulum.py --gif runs/examples/pendulum.gif

About 4 s for the 200 steps, 8 s with the GIF, on one thread of a 2-core machine (twice that
while other jobs run).
"""

import argparse
import math
from dataclasses import dataclass, fields
from pathlib import Path

import gymnasium
import torch
from tqdm.auto import tqdm

from mpc_policy.agents.data.expert import shift_plan
from mpc_policy.agents.run.evaluate import save_gif
from mpc_policy.envs import PendulumDynamics, pendulum_cost
from mpc_policy.policy import MPCPolicy


@dataclass
class Args:
    policy: str = "runs/examples/pendulum_dx.pt"  # state dict saved by bc_pendulum.py
    horizon: int = 20
    max_steps: int = 200  # episode length
    seed: int = 4  # starts 80 degrees from upright
    gif: str = ""  # write a GIF here ("" for none)


def parse_args() -> Args:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    for f in fields(Args):
        parser.add_argument(
            f"--{f.name.replace('_', '-')}", type=type(f.default), default=f.default
        )
    return Args(**vars(parser.parse_args()))


args = parse_args()

# The policy: float32 observations in, solved in float64, float32 actions out.
policy = MPCPolicy(
    PendulumDynamics(dtype=torch.float64),
    pendulum_cost(dtype=torch.float64),
    horizon=args.horizon,
    u_lower=-2.0,
    u_upper=2.0,
    solve_dtype=torch.float64,
    jacobian="analytic",
    on_unconverged="ignore",  # acting with the best plan found; unconverged solves are counted
)
if Path(args.policy).is_file():
    policy.load_state_dict(torch.load(args.policy, weights_only=True))
    print(f"loaded {args.policy}")
else:
    print(f"{args.policy} not found: acting with the true parameters")

env = gymnasium.make(
    "mpc_policy/Pendulum-v0",
    max_episode_steps=args.max_steps,
    render_mode="rgb_array" if args.gif else None,
)
obs, _ = env.reset(seed=args.seed)
frames, total, plan, done, unconverged = [], 0.0, None, False, 0
bar = tqdm(total=args.max_steps, desc="rollout", unit="step")
while not done:
    if args.gif:
        frames.append(env.render())
    with torch.no_grad():  # acting needs no gradients
        solution = policy.plan(
            torch.as_tensor(obs), u_init=None if plan is None else shift_plan(plan)
        )
    plan = solution.u  # (1, T, 1): next step's warm start
    unconverged += int((~solution.info.converged).sum())
    obs, reward, terminated, truncated, _ = env.step(solution.u[0, 0].numpy())
    total += float(reward)
    done = terminated or truncated
    bar.update()
bar.close()
env.close()

angle = math.degrees(math.atan2(obs[1], obs[0]))
print(
    f"return {total:.2f} over {args.max_steps} steps; final angle {angle:.1f} deg from upright; "
    f"{unconverged} solves stopped before a fixed point (raise max_iter if many)"
)
if args.gif:
    print(f"GIF: {save_gif(frames, args.gif, fps=20.0)}")
