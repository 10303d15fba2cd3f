"""Behaviour cloning of an MPC expert with a learnable MPC policy (the paper's mpc.dx).

The expert is an MPC that knows the pendulum, (g, m, l) = (10, 1, 1). The learner is the same
MPC with wrong physical parameters; we learn them by matching the expert's whole nominal
action sequences u_1:T(x) from random start states (the imitation loss of Amos et al.,
2018, section 5.3): the learner never sees a state after the start. The motion depends on
g/l and m l^2 only, so those are what comes back. About 8 s on one thread of a 2-core machine
(14 s while other jobs run).

    python examples/bc_pendulum.py
    python examples/rollout_pendulum.py          # then watch the learned policy act
"""

import argparse
import math
from dataclasses import dataclass, fields
from pathlib import Path

import torch
from tqdm.auto import tqdm

from mpc_policy.agents.data.expert import MPCExpert
from mpc_policy.envs import PendulumDynamics, pendulum_cost
from mpc_policy.envs.params import PendulumParams
from mpc_policy.policy import MPCPolicy


@dataclass
class Args:
    n_train: int = 10  # expert trajectories to learn from
    n_test: int = 10  # held-out trajectories
    horizon: int = 20  # MPC horizon T
    steps: int = 60  # optimizer steps
    batch_size: int = 10
    lr: float = 0.05  # RMSprop (alpha 0.5, the paper's), cosine-decayed to 0
    init_gravity: float = 13.0  # the learner's starting (wrong) parameters
    init_mass: float = 1.5
    init_length: float = 0.8
    seed: int = 0
    save: str = "runs/examples/pendulum_dx.pt"


def parse_args() -> Args:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    for f in fields(Args):
        parser.add_argument(
            f"--{f.name.replace('_', '-')}", type=type(f.default), default=f.default
        )
    return Args(**vars(parser.parse_args()))


def start_states(n: int) -> torch.Tensor:
    """(n, 3) states (cos th, sin th, th_dot), th ~ U(-pi/2, pi/2), th_dot ~ U(-1, 1)."""
    theta = (torch.rand(n, dtype=torch.float64) * 2 - 1) * math.pi / 2
    theta_dot = torch.rand(n, dtype=torch.float64) * 2 - 1
    return torch.stack([theta.cos(), theta.sin(), theta_dot], dim=-1)


args = parse_args()
torch.manual_seed(args.seed)

# 1. Expert data: the expert's nominal action sequences (n, T, 1) from random start states.
expert = MPCExpert.for_system("pendulum", horizon=args.horizon)
x_train, x_test = start_states(args.n_train), start_states(args.n_test)
u_train, u_test = expert(x_train), expert(x_test)

# 2. The learner: an MPC policy whose dynamics parameters are nn.Parameters; the cost is known.
params = PendulumParams(gravity=args.init_gravity, mass=args.init_mass, length=args.init_length)
policy = MPCPolicy(
    PendulumDynamics(params, dtype=torch.float64),
    pendulum_cost(learn_weights=False, learn_goal=False, dtype=torch.float64),
    horizon=args.horizon,
    u_lower=-2.0,
    u_upper=2.0,
    jacobian="analytic",  # the dynamics module's own Jacobian
    on_unconverged="zero_grad",  # an unconverged solve passes no gradient (and warns)
    # cold swing-up solves end linearly convergent: 50 iterations (the default) leave a few
    # a little above the float64 tolerance, and their gradient would be dropped
    max_iter=100,
)
learned = [p for p in policy.parameters() if p.requires_grad]
optimizer = torch.optim.RMSprop(learned, lr=args.lr, alpha=0.5)
schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, args.steps)


def report(step: int, loss: float) -> None:
    d = policy.dynamics
    g_over_l = float(d.gravity / d.length)
    m_l2 = float(d.mass * d.length**2)
    with torch.no_grad():
        test = float((policy.plan(x_test).u - u_test).pow(2).mean())
    tqdm.write(
        f"step {step:3d}  train {loss:.2e}  test {test:.2e}  g/l {g_over_l:6.3f} (10)  "
        f"m l^2 {m_l2:5.3f} (1)"
    )


# 3. Behaviour cloning: L = E || u_1:T(x; theta) - u_1:T(x; theta_expert) ||^2.
for step in tqdm(range(1, args.steps + 1), desc="behaviour cloning", unit="step"):
    rows = torch.randperm(args.n_train)[: args.batch_size]
    u = policy.plan(x_train[rows]).u  # differentiable w.r.t. g, m, l
    loss = (u - u_train[rows]).pow(2).mean()
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    schedule.step()
    if step % 10 == 0 or step == args.steps:
        with torch.no_grad():
            report(step, float(loss))

# 4. Save the learned policy's parameters.
Path(args.save).parent.mkdir(parents=True, exist_ok=True)
torch.save(policy.state_dict(), args.save)
print(f"saved the learned policy to {args.save}")
