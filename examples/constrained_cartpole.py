"""Learn where the track ends: imitation through the constraint of a track-limited cart-pole.

The expert is an MPC with the true cart-pole model and the track |p| <= 0.5 m as a constraint
(``MPC(constraints=TrackLimit(0.5))``, here inside ``MPCExpert``). The learner has the same
model and cost but believes the track is 1.0 m long; it learns the limit from the expert's
action sequences alone, the paper's imitation loss ||u_learner - u_expert||^2, whose
gradient reaches ``TrackLimit.limit`` through the KKT conditions of the constrained solve
(only the elements whose plans touch the track's end carry it). Each step warm-starts the
learner's solve with the last controls and multipliers. Then the learned controller drives
``mpc_policy/CartPoleTrack-v0`` in receding horizon (plans and multipliers shifted by one
step) and keeps the cart on the track.

    python examples/constrained_cartpole.py

About 30 s (one thread of a 2-core machine).
"""

import argparse
import time
from dataclasses import dataclass, fields

import gymnasium
import torch

from mpc_policy import MPC
from mpc_policy.agents.data.expert import MPCExpert, shift_plan
from mpc_policy.envs.cartpole import CartPoleDynamics, TrackLimit, cartpole_cost


@dataclass
class Args:
    true_limit: float = 0.5  # the expert's track half-length (m)
    initial_limit: float = 1.0  # the learner's first guess
    candidates: int = 16  # start states drawn from the environment
    batch: int = 4  # of which the imitation data keeps those whose plans reach the end
    horizon: int = 15
    steps: int = 20  # Adam steps on the limit
    lr: float = 0.04
    rollout_steps: int = 20  # receding-horizon steps in the environment
    seed: int = 0


def parse_args() -> Args:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    for f in fields(Args):
        parser.add_argument(
            f"--{f.name.replace('_', '-')}", type=type(f.default), default=f.default
        )
    return Args(**vars(parser.parse_args()))


args = parse_args()
start = time.perf_counter()
torch.manual_seed(args.seed)
F64 = torch.float64
dynamics, cost = CartPoleDynamics(dtype=F64), cartpole_cost(dtype=F64)
dynamics.requires_grad_(False)
cost.requires_grad_(False)

# Imitation data: start states from the environment, plans from the constrained expert; only
# the plans that reach the track's end say where it is, and only those are kept.
env = gymnasium.make("mpc_policy/CartPoleTrack-v0", track_limit=args.true_limit)
starts = []
for index in range(args.candidates):
    env.reset(seed=args.seed + index)
    starts.append(torch.as_tensor(env.unwrapped.state, dtype=F64))
expert = MPCExpert(
    dynamics, cost, 100.0, args.horizon, constraints=TrackLimit(args.true_limit, dtype=F64)
)
plans = expert.mpc(torch.stack(starts), expert.cost, expert.dynamics)
assert plans.constraints is not None
touching = plans.constraints.active.flatten(1).any(1).nonzero().flatten()[: args.batch]
x_init, u_expert = torch.stack(starts)[touching], plans.u[touching].detach()
print(f"{len(touching)} of {args.candidates} expert plans reach the track's end")

# The learner: the same model and cost, a learnable track limit.
track = TrackLimit(args.initial_limit, dtype=F64)
learner = MPC(
    5, 1, args.horizon, -100.0, 100.0, constraints=track, jacobian="analytic", max_iter=100
)
optimizer = torch.optim.Adam(track.parameters(), lr=args.lr, betas=(0.5, 0.9))
u_warm, multipliers = None, None
for step in range(args.steps):
    solution = learner(x_init, cost, dynamics, u_init=u_warm, multipliers=multipliers)
    assert solution.constraints is not None
    loss = (solution.u - u_expert).square().mean()
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    u_warm = solution.u.detach()
    multipliers = solution.constraints.multipliers
    if step % 5 == 0 or step == args.steps - 1:
        active = int(solution.constraints.active.flatten(1).any(1).sum())
        print(
            f"step {step:2d}  loss {loss.item():9.4f}  limit {track.limit.item():.4f} m  "
            f"elements at the track's end {active}/{args.batch}"
        )
print(
    f"learned limit {track.limit.item():.4f} m (true {args.true_limit} m) "
    f"after {time.perf_counter() - start:.0f} s"
)

# The learned controller in the environment from the first imitation start, warm-started with
# shifted plans and multipliers.
env.reset(seed=args.seed, options={"state": x_init[0].numpy()})
state = x_init[:1]
u_plan, plan_multipliers, furthest = None, None, 0.0
with torch.no_grad():
    for _ in range(args.rollout_steps):
        plan = learner(state, cost, dynamics, u_init=u_plan, multipliers=plan_multipliers)
        assert plan.constraints is not None
        _, _, terminated, truncated, info = env.step(plan.u[0, 0].float().numpy())
        state = torch.as_tensor(env.unwrapped.state, dtype=F64).unsqueeze(0)
        furthest = max(furthest, abs(float(state[0, 0])))
        if terminated or truncated:
            break
        u_plan = shift_plan(plan.u)
        plan_multipliers = shift_plan(plan.constraints.multipliers)
cos_theta = float(state[0, 2])
print(
    f"rollout: {args.rollout_steps} steps, furthest |p| {furthest:.3f} m (track "
    f"{args.true_limit} m), off the track: {info['off_track']}, final cos(theta) "
    f"{cos_theta:.3f}, {time.perf_counter() - start:.0f} s in all"
)
