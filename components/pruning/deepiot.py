"""DeepIoT's compressor-critic (Yao et al., SenSys 2017), written from the paper's description.

- The *compressor* is an LSTM that walks the compressible groups in layer
  order; at each step a head turns its state into a keep-probability for
  every element of that group (filter, recurrent unit, dense unit), and the
  probabilities feed the next step, so a layer's decision sees the layers
  before it.
- Each training step samples Bernoulli masks from those probabilities, trains
  the task network one batch under the masks, and updates the compressor to
  lower `loss + lambda * cost` (cost relative to the baseline's). The task
  loss is only known for the sampled masks, so its gradient is REINFORCE's,
  with the *critic* (a moving average of the loss) as the baseline that cuts
  the gradient's variance. The cost is a known function of the widths, so
  its gradient is taken through its expectation instead: each element's
  keep-probability is charged its group's marginal cost (the cost model's
  finite difference at the sampled widths). With thousands of elements the
  REINFORCE estimate of the cost term is mostly noise; the marginal charge
  is what lets a latency model steer: an element of a layer that is
  expensive on this device is pushed harder than one of a cheap layer.
- A threshold rising on a schedule removes, for good, the elements whose
  keep-probability fell below it, least wanted first, and no more once the
  kept structure meets the budget. From then on the task network trains on
  the kept structure alone until its validation accuracy is back at the
  floor. The kept structure (everything not removed) is what gets sliced.
- With a teacher (the baseline), the task network learns under the masks
  from `(1 - distill) * cross-entropy + distill * T^2 * KL(teacher || it)`
  (Hinton et al.'s soft targets): a heavily masked network keeps more of the
  baseline's behaviour than labels alone give it. The compressor's reward
  stays the task loss on the labels.
- Every validation check records the kept structure and its accuracy as a
  *candidate*; `front()` is the set no other candidate beats on both cost and
  accuracy, what the stage times on the device before it picks one.
- With `remove_layers`, a layer that may go whole (`groups.removable`) has
  a gate of its own (`LayerGates`): charged the layer's whole cost, fixed
  cost included, tried on some steps with REINFORCE against its own critic,
  and the layer is removed under the threshold only where the validation
  users lose at most `GATE_TOLERANCE` without it.
- `set_cost` swaps the cost (a latency model refitted on the structures the
  search visited) and `run(until=...)` continues from where it stopped: a
  structure that is over the budget under the new model is pruned further.

Scoring (the compressor), schedule (the threshold) and slicing
(`slicing.py`) are separate pieces, as Torch-Pruning keeps them.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass

import torch
from torch import nn

from components.models.training import augment
from components.pruning.costs import resized_spec
from components.pruning.finetune import judged_accuracy
from components.pruning.groups import groups, removable
from components.pruning.masked import set_masks

log = logging.getLogger(__name__)


class Compressor(nn.Module):
    def __init__(self, sizes: list[int], hidden: int, init_keep: float):
        super().__init__()
        self.sizes = list(sizes)
        self.cell = nn.LSTMCell(hidden, hidden)
        self.start = nn.Parameter(torch.zeros(1, hidden))
        self.heads = nn.ModuleList(nn.Linear(hidden, n) for n in sizes)
        self.feedback = nn.ModuleList(nn.Linear(n, hidden) for n in sizes)
        with torch.no_grad():  # start by keeping nearly everything
            for head in self.heads:
                head.weight.mul_(0.1)
                head.bias.fill_(math.log(init_keep / (1 - init_keep)))

    def forward(self) -> list[torch.Tensor]:
        """Keep-probabilities per group, in order."""
        h = c = torch.zeros_like(self.start)
        x = self.start
        probs = []
        for head, back in zip(self.heads, self.feedback):
            h, c = self.cell(x, (h, c))
            p = torch.sigmoid(head(h))[0]
            probs.append(p)
            x = back(p[None])
        return probs


GATE_STEP_SHARE = 0.5  # the share of pruning steps that try one layer's gate; the rest run every layer
GATE_TOLERANCE = 0.01  # validation accuracy a layer may take with it when it is removed whole
GATE_LEARNING_RATE = 0.1  # a layer whose removal saves all the cost left to cut falls from 0.9 to 0.5 in ~60 steps


class LayerGates(nn.Module):
    """The keep-probability of each layer that may be removed whole, apart from the compressor's.

    Kept apart so that a step that removed a layer, whose loss says how much
    the layer adds, does not also move the elements' probabilities: the
    compressor learns only from steps where every layer ran, the gates from
    the steps that tried one of them (one gate, drawn at random, on
    `GATE_STEP_SHARE` of the steps), each with its own critic. Each gate is
    charged its layer's whole cost (`layer_costs`) through its probability,
    as the elements are charged theirs.
    """

    def __init__(self, count: int, init_keep: float):
        super().__init__()
        self.logits = nn.Parameter(torch.full((count,), math.log(init_keep / (1 - init_keep))))

    def forward(self) -> torch.Tensor:
        return torch.sigmoid(self.logits)


class Critic:
    """A moving average of the reward: REINFORCE's baseline."""

    def __init__(self, decay: float):
        self.decay, self.value = decay, None

    def update(self, reward: float) -> float:
        """The baseline for this reward (the average before it), then fold the reward in."""
        baseline = reward if self.value is None else self.value
        self.value = reward if self.value is None else self.decay * self.value + (1 - self.decay) * reward
        return baseline


@dataclass(frozen=True)
class Schedule:
    """The pruning threshold: `start`, raised by `step` every `every` training steps, up to `limit`."""

    start: float
    step: float
    every: int
    limit: float

    def threshold(self, training_step: int) -> float:
        return min(self.limit, self.start + self.step * (training_step // self.every))


def sample_masks(probs: list[torch.Tensor], alive: list[torch.Tensor], generator: torch.Generator
                 ) -> list[torch.Tensor]:
    """Bernoulli masks over the alive elements (removed ones stay 0); a group never loses all of them."""
    masks = []
    for p, live in zip(probs, alive):
        m = (torch.rand(p.shape, generator=generator) < p.detach()).float() * live
        if m.sum() == 0:
            m[torch.argmax(p.detach() * live)] = 1.0
        masks.append(m)
    return masks


def log_prob(probs: list[torch.Tensor], masks: list[torch.Tensor], alive: list[torch.Tensor]) -> torch.Tensor:
    eps = 1e-6
    total = torch.zeros(())
    for p, m, live in zip(probs, masks, alive):
        terms = m * torch.log(p + eps) + (1 - m) * torch.log(1 - p + eps)
        total = total + (terms * live).sum()
    return total


def widths(names: list[str], masks: list[torch.Tensor]) -> dict[str, int]:
    return {name: int(m.sum().item()) for name, m in zip(names, masks)}


def relative_cost(cost, spec, names: list[str], masks: list[torch.Tensor]) -> float:
    return cost.relative(resized_spec(spec, widths(names, masks)))


def cost_floor(cost, spec, removed: list[str] | tuple[str, ...] = ()) -> float:
    """The relative cost with one element left in every group and the `removed` layers gone: no search goes below."""
    return cost.relative(resized_spec(spec, {g.layer: 0 if g.layer in removed else 1 for g in groups(spec)}))


def layer_costs(cost, spec, sizes: dict[str, int], layers: list[str]) -> list[float]:
    """Relative cost of each of `layers` whole at these widths: the structure with it (at its width here, at
    least one element) less the structure without it. What removing it saves, fixed per-layer cost included."""
    out = []
    for name in layers:
        on = {**sizes, name: max(1, sizes[name])}
        out.append(max(0.0, cost.relative(resized_spec(spec, on)) - cost.relative(resized_spec(spec, {**on, name: 0}))))
    return out


def marginal_costs(cost, spec, sizes: dict[str, int]) -> list[float]:
    """Relative cost of one element of each group at these widths (finite difference over ~10 % of it).

    A step of several elements smooths over a latency model's steps (a width
    just past a multiple of 16 is slower than one more); never negative: an
    element is never rewarded for being kept.
    """
    here = cost.relative(resized_spec(spec, sizes))
    out = []
    for name, width in sizes.items():
        step = max(1, round(0.1 * width))
        if width > step:
            delta = here - cost.relative(resized_spec(spec, {**sizes, name: width - step}))
        else:
            delta = cost.relative(resized_spec(spec, {**sizes, name: width + step})) - here
        out.append(max(0.0, delta / step))
    return out


@dataclass(frozen=True)
class SearchSettings:
    budget: float  # relative cost to reach (0.07: 7 % of the baseline's)
    accuracy_floor: float  # validation accuracy (mean over the validation users) the kept structure must keep
    lambda_cost: float  # weight of the relative cost against the task loss in the reward
    critic_decay: float
    schedule: Schedule
    max_steps: int
    batch_size: int
    learning_rate: float  # task network
    compressor_learning_rate: float
    compressor_hidden: int
    init_keep: float
    eval_every: int
    seed: int
    distill: float = 0.0  # weight of distillation from the teacher in the task network's loss; 0: labels only
    temperature: float = 2.0
    remove_layers: bool = False  # may remove whole layers (groups.removable), each by a keep-probability of its own


@dataclass
class StepRecord:
    step: int
    threshold: float
    loss: float
    sampled_cost: float  # relative cost of the sampled masks
    kept_cost: float  # relative cost of everything not removed
    kept_params: int
    accuracy: float | None = None  # of the kept structure, mean over the validation users (every eval_every)


@dataclass
class Candidate:
    """A kept structure met at a validation check: what could be sliced, its cost then, its accuracy."""

    step: int
    kept: dict[str, list[int]]  # indices of the elements kept, per group
    cost: float  # relative cost under the cost model of the time
    accuracy: float  # validation accuracy of the structure with the task network of the time
    params: int

    @property
    def widths(self) -> dict[str, int]:
        return {name: len(idx) for name, idx in self.kept.items()}

    def key(self) -> tuple:
        return tuple(sorted((name, tuple(idx)) for name, idx in self.kept.items()))


def front(candidates: list[Candidate]) -> list[Candidate]:
    """The candidates no other one beats on both cost (lower) and accuracy (higher), cheapest first.

    For a structure met twice, the later check counts (the task network had trained longer).
    """
    latest: dict[tuple, Candidate] = {}
    for c in candidates:
        latest[c.key()] = c
    unique = sorted(latest.values(), key=lambda c: (c.cost, -c.accuracy))
    out: list[Candidate] = []
    for c in unique:
        if all(c.accuracy > o.accuracy for o in out):
            out.append(c)
    return out


class DeepIoTSearch:
    """One compressor-critic run over a task model; `run()` steps until the budget is met or max_steps."""

    def __init__(self, model, cost, x_train, y_train, x_val, y_val, settings: SearchSettings, augmentation=None,
                 teacher=None, val_users=None):
        """`augmentation`: train's settings (rotation, scale, noise) to augment batches as the baseline was;
        `teacher`: the baseline, distilled into the task network when `settings.distill > 0`; `val_users`: the
        user of each validation window, so that accuracy is the mean over users (each counts once)."""
        if settings.distill > 0 and teacher is None:
            raise ValueError("distillation during the search needs the baseline as teacher")
        self.model, self.cost, self.s, self.augmentation = model, cost, settings, augmentation
        self.teacher = teacher.eval() if teacher is not None and settings.distill > 0 else None
        self.spec = model.spec
        self.groups = groups(self.spec)
        self.names = [g.layer for g in self.groups]
        self.x_train, self.y_train, self.x_val, self.y_val = x_train, y_train, x_val, y_val
        self.val_users = val_users
        torch.manual_seed(settings.seed)
        self.generator = torch.Generator().manual_seed(settings.seed)
        self.compressor = Compressor([g.size for g in self.groups], settings.compressor_hidden, settings.init_keep)
        self.critic = Critic(settings.critic_decay)
        self.alive = [torch.ones(g.size) for g in self.groups]
        # a layer that may go whole has a gate of its own (see `LayerGates`)
        self.removable = removable(self.spec) if settings.remove_layers else []
        self.gates = LayerGates(len(self.removable), settings.init_keep)
        self.gate_critic = Critic(settings.critic_decay)
        self.gates_alive = torch.ones(len(self.removable))
        self.cost_floor = cost_floor(cost, self.spec, self.removable)
        self.task_optimizer = torch.optim.Adam(model.parameters(), lr=settings.learning_rate)
        self.compressor_optimizer = torch.optim.Adam(self.compressor.parameters(), lr=settings.compressor_learning_rate)
        # plain gradient steps, not Adam's: a gate moves as fast as its layer's cost (and what it adds) push it
        self.gate_optimizer = torch.optim.SGD(self.gates.parameters(), lr=GATE_LEARNING_RATE)
        self.step_index = 0
        self.history: list[StepRecord] = []
        self.candidates: list[Candidate] = []

    def set_cost(self, cost) -> None:
        """Steer by another cost from now on (a refitted latency model); the kept structure stays."""
        self.cost = cost
        self.cost_floor = cost_floor(cost, self.spec, self.removable)

    def kept(self) -> dict[str, torch.Tensor]:
        """Indices of the elements not removed, per group: what slicing keeps."""
        return {name: torch.nonzero(live).flatten() for name, live in zip(self.names, self.alive)}

    def kept_spec(self):
        """The description of the kept structure (what slicing would build)."""
        return resized_spec(self.spec, widths(self.names, self.alive))

    def kept_cost(self) -> float:
        return self.cost.relative(self.kept_spec())

    def step(self) -> StepRecord:
        s = self.s
        self.model.train()
        pruning = self.kept_cost() > s.budget  # past the budget: train the kept structure back to the floor
        probs = self.compressor()
        masks = sample_masks(probs, self.alive, self.generator) if pruning else [a.clone() for a in self.alive]
        tried = self._try_gate() if pruning else None
        if tried is not None and not tried[1]:  # this step trains (and costs) the structure without the layer
            masks[self.names.index(self.removable[tried[0]])].zero_()
        batch = torch.randint(len(self.x_train), (s.batch_size,), generator=self.generator)
        set_masks(self.model, dict(zip(self.names, masks)))
        x = self.x_train[batch]
        if self.augmentation is not None:
            x = augment(x, self.augmentation, self.model.input_std, self.generator)
        logits = self.model(x)
        loss = nn.functional.cross_entropy(logits, self.y_train[batch])
        trained_on = loss
        if self.teacher is not None:
            t = s.temperature
            with torch.no_grad():
                soft = nn.functional.log_softmax(self.teacher(x) / t, dim=1)
            kd = nn.functional.kl_div(nn.functional.log_softmax(logits / t, dim=1), soft, log_target=True,
                                      reduction="batchmean")
            trained_on = (1 - s.distill) * loss + s.distill * t * t * kd
        self.task_optimizer.zero_grad()
        trained_on.backward()
        self.task_optimizer.step()
        set_masks(self.model, None)
        sampled_cost = relative_cost(self.cost, self.spec, self.names, masks)
        if pruning:
            self._update_gates(tried, masks, float(loss.detach()), sampled_cost)
            if tried is None or tried[1]:  # every layer ran: the elements' reward is not a removed layer's
                self._update_compressor(probs, masks, float(loss.detach()), sampled_cost)
        self.step_index += 1
        if pruning:
            self._remove_below(s.schedule.threshold(self.step_index))
        kept = self.kept_spec()
        record = StepRecord(self.step_index, s.schedule.threshold(self.step_index), float(loss.detach()),
                            sampled_cost, self.cost.relative(kept), kept.params)
        if self.step_index % s.eval_every == 0:
            record.accuracy = self.accuracy()
            self.candidates.append(Candidate(self.step_index, {n: idx.tolist() for n, idx in self.kept().items()},
                                             record.kept_cost, record.accuracy, kept.params))
        self.history.append(record)
        return record

    def _try_gate(self) -> tuple[int, bool] | None:
        """Every other step, one alive gate drawn at random is sampled: (its index, whether the layer stays)."""
        alive = torch.nonzero(self.gates_alive).flatten()
        if not len(alive) or torch.rand((), generator=self.generator) >= GATE_STEP_SHARE:
            return None
        k = int(alive[torch.randint(len(alive), (), generator=self.generator)])
        with torch.no_grad():
            p = float(self.gates()[k])
        return k, bool(torch.rand((), generator=self.generator) < p)

    def _above_floor(self, sampled_cost: float) -> float:
        """The cost left to remove above one element per group (the layers removed for good gone too)."""
        gone = [name for name, live in zip(self.removable, self.gates_alive) if not live]
        return max(sampled_cost - cost_floor(self.cost, self.spec, gone), 1e-3)

    def _update_compressor(self, probs: list[torch.Tensor], masks: list[torch.Tensor], loss: float,
                           sampled_cost: float) -> None:
        """One step on `loss + lambda * cost`: REINFORCE for the loss, the marginal charge for the cost."""
        advantage = loss - self.critic.update(loss)
        # charged on the log of the removable cost (above the floor of one element per group): a 1 % cut of
        # what is left to cut is worth the same at any size, so the push does not fade as the model shrinks
        # or as a latency model's fixed per-layer costs start to dominate
        charges = [c / self._above_floor(sampled_cost)
                   for c in marginal_costs(self.cost, self.spec, widths(self.names, masks))]
        expected_cost = sum(charge * (p * live).sum() for charge, p, live in zip(charges, probs, self.alive))
        self.compressor_optimizer.zero_grad()
        (advantage * log_prob(probs, masks, self.alive) + self.s.lambda_cost * expected_cost).backward()
        self.compressor_optimizer.step()

    def _update_gates(self, tried: tuple[int, bool] | None, masks: list[torch.Tensor], loss: float,
                      sampled_cost: float) -> None:
        """Each alive gate is charged what its layer costs whole at these widths (fixed cost included); the one
        tried this step, if any, also gets REINFORCE's term against the gates' own critic."""
        if not self.removable:
            return
        sizes = widths(self.names, masks)
        if tried is not None and not tried[1]:  # priced as it would stay, at the width it has
            name = self.removable[tried[0]]
            sizes[name] = int(self.alive[self.names.index(name)].sum())
        charges = torch.tensor(layer_costs(self.cost, self.spec, sizes, self.removable)) / self._above_floor(
            sampled_cost)
        p = self.gates()
        objective = self.s.lambda_cost * (charges * p * self.gates_alive).sum()
        if tried is not None:
            k, stays = tried
            advantage = loss - self.gate_critic.update(loss)
            objective = objective + advantage * torch.log((p[k] if stays else 1 - p[k]) + 1e-6)
        self.gate_optimizer.zero_grad()
        objective.backward()
        self.gate_optimizer.step()

    def _may_remove(self, k: int) -> bool:
        """The kept structure without layer k loses at most `GATE_TOLERANCE` of validation accuracy; if it loses
        more, the gate goes back to where it started (it is proposed again only if the cost pushes it down again)."""
        name = self.removable[k]
        with_it = self.accuracy()
        without = self.accuracy({n: [] if n == name else torch.nonzero(live).flatten().tolist()
                                 for n, live in zip(self.names, self.alive)})
        if without >= with_it - GATE_TOLERANCE:
            log.info("search step %d: layer %s removed whole (validation accuracy %.3f without it, %.3f with it)",
                     self.step_index, name, without, with_it)
            return True
        log.info("search step %d: layer %s kept: validation accuracy %.3f without it, %.3f with it", self.step_index,
                 name, without, with_it)
        with torch.no_grad():
            self.gates.logits[k] = math.log(self.s.init_keep / (1 - self.s.init_keep))
        return False

    def _remove_below(self, threshold: float) -> None:
        """Remove alive elements and layers under `threshold`, least wanted first, stopping once the budget is met."""
        with torch.no_grad():
            probs, gate_probs = self.compressor(), self.gates()
        below = sorted((float(p[i]), g, int(i)) for g, (p, live) in enumerate(zip(probs, self.alive))
                       for i in torch.nonzero((p < threshold) & (live > 0)).flatten())
        below += [(float(gate_probs[k]), -1, k) for k in range(len(self.removable))
                  if gate_probs[k] < threshold and self.gates_alive[k] > 0]
        for _, g, i in sorted(below):
            if g == -1:  # a whole layer, if the validation users say it adds little
                if not self._may_remove(i):
                    continue
                self.gates_alive[i] = 0.0
                self.alive[self.names.index(self.removable[i])].zero_()
            elif self.alive[g].sum() <= 1:  # never remove a group's last element (a layer goes by its gate)
                continue
            else:
                self.alive[g][i] = 0.0
            if self.kept_cost() <= self.s.budget:
                break

    def accuracy(self, kept: dict[str, torch.Tensor] | None = None) -> float:
        """Validation accuracy of the kept structure (every alive element on), or of `kept`'s elements."""
        self.model.eval()
        if kept is None:
            masks = dict(zip(self.names, self.alive))
        else:
            masks = {}
            for name, live in zip(self.names, self.alive):
                m = torch.zeros_like(live)
                m[torch.as_tensor(kept[name], dtype=torch.long)] = 1.0
                masks[name] = m
        set_masks(self.model, masks)
        with torch.no_grad():
            predicted = torch.cat([self.model(self.x_val[i:i + 1024]).argmax(dim=1)
                                   for i in range(0, len(self.x_val), 1024)])
        set_masks(self.model, None)
        return judged_accuracy(predicted, self.y_val, self.val_users)

    def done(self, record: StepRecord) -> bool:
        """The budget is met (under the cost steering now) and the record's accuracy is at the floor."""
        return (record.accuracy is not None and record.kept_cost <= self.s.budget + 1e-12
                and record.accuracy >= self.s.accuracy_floor)

    def front(self) -> list[Candidate]:
        """The non-dominated candidates, their costs re-read with the cost steering now."""
        for c in self.candidates:
            c.cost = self.cost.relative(resized_spec(self.spec, c.widths))
        return front(self.candidates)

    def run(self, progress=None, checkpoint=None, checkpoint_every: int = 0, until: int | None = None
            ) -> list[StepRecord]:
        """Step until the budget is met above the floor or step `until` (default `max_steps`).

        `checkpoint(state)` every `checkpoint_every` steps and at the end. A
        search that had finished continues only if the kept structure is now
        over the budget (the cost was swapped) or below the floor.
        """
        until = self.s.max_steps if until is None else until
        if self.history and self._finished():
            return self.history  # a resumed run that had already finished
        while self.step_index < until:
            record = self.step()
            if progress is not None:
                progress(record)
            finished = self.done(record)
            if checkpoint is not None and (finished or (checkpoint_every and self.step_index % checkpoint_every == 0)):
                checkpoint(self.state())
            if finished:
                break
        return self.history

    def _finished(self) -> bool:
        last = next((r for r in reversed(self.history) if r.accuracy is not None), None)
        return (last is not None and last.step == self.history[-1].step and self.kept_cost() <= self.s.budget + 1e-12
                and last.accuracy >= self.s.accuracy_floor)

    # ---- checkpoints: plain tensors and numbers, read back with torch.load(weights_only=True) ----------

    def state(self) -> dict:
        return {"model": self.model.state_dict(), "compressor": self.compressor.state_dict(),
                "task_optimizer": self.task_optimizer.state_dict(),
                "compressor_optimizer": self.compressor_optimizer.state_dict(),
                "alive": [a.clone() for a in self.alive], "gates_alive": self.gates_alive.clone(),
                "gates": self.gates.state_dict(), "gate_optimizer": self.gate_optimizer.state_dict(),
                "gate_critic": self.gate_critic.value,
                "step": self.step_index, "critic": self.critic.value,
                "generator": self.generator.get_state(), "torch_rng": torch.get_rng_state(),
                "history": [asdict(r) for r in self.history], "names": self.names,
                "candidates": [asdict(c) for c in self.candidates]}

    def restore(self, state: dict) -> None:
        if state["names"] != self.names:
            raise ValueError(f"checkpoint is for groups {state['names']}, this model has {self.names}")
        self.model.load_state_dict(state["model"])
        self.compressor.load_state_dict(state["compressor"])
        self.task_optimizer.load_state_dict(state["task_optimizer"])
        self.compressor_optimizer.load_state_dict(state["compressor_optimizer"])
        self.alive = [a.clone() for a in state["alive"]]
        self.gates_alive = state.get("gates_alive", torch.ones(len(self.removable))).clone()
        if "gates" in state:
            self.gates.load_state_dict(state["gates"])
            self.gate_optimizer.load_state_dict(state["gate_optimizer"])
            self.gate_critic.value = state["gate_critic"]
        self.step_index, self.critic.value = state["step"], state["critic"]
        self.generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        self.history = [StepRecord(**r) for r in state["history"]]
        self.candidates = [Candidate(**c) for c in state.get("candidates", [])]
