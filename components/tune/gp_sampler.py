"""Katib's `bayesianoptimization` for the local backend: a Gaussian-process sampler for optuna.

Why our own: optuna's GPSampler is built on PyTorch, which the step images do not install
(they carry TensorFlow); scikit-learn's GaussianProcessRegressor is there already.

How a trial is sampled:
- Until `n_startup_trials` trials have completed: independently at random (optuna's
  RandomSampler with the same seed).
- Then every parameter of the search space is encoded into the unit cube: floats and ints on
  their own scale (log for log distributions), ints and stepped floats widened by half a step
  at both ends so that every feasible value owns an equal share of [0, 1]; numeric choices
  (Katib's `discrete`) by their rank; string choices (Katib's `categorical`) one-hot.
- A GaussianProcessRegressor with Constant * Matern(nu=2.5, one length scale per dimension)
  + White noise is fitted to the completed trials' objective (standardized; negated when the
  study minimizes, so the GP always maximizes). Trials still running enter as if they had
  returned the GP's mean there (a "kriging believer", the kernel kept): their uncertainty
  shrinks, so parallel trials spread out instead of all proposing the same point. (Entering
  them at the worst value seen, a "constant liar", distorted the fit: with 3 in parallel it
  was barely better than random.)
- Expected improvement is maximized over random candidates in the cube plus perturbations of
  the best trials so far, then refined twice by smaller perturbations of the best three
  candidates. Every candidate is snapped to a feasible point first (step, int, choice), so the
  EI compared is that of a point that can actually run, and points already run score near
  zero.

Deterministic: the random numbers of trial n come from (seed, n), the GP fit from them, so the
same seed and the same trial results give the same suggestions.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.samplers import BaseSampler, RandomSampler
from optuna.search_space import IntersectionSearchSpace
from optuna.study import Study, StudyDirection
from optuna.trial import FrozenTrial, TrialState


def _numeric_choices(distribution: CategoricalDistribution) -> bool:
    return all(isinstance(c, int | float) and not isinstance(c, bool)
               for c in distribution.choices)


class _Coordinate:
    """One parameter's columns in the unit cube: encode values, decode (snapped) values."""

    def __init__(self, name: str, distribution: BaseDistribution, start: int):
        self.name, self.distribution, self.start = name, distribution, start
        self.onehot = (isinstance(distribution, CategoricalDistribution)
                       and not _numeric_choices(distribution))
        self.width = len(distribution.choices) if self.onehot else 1
        if isinstance(distribution, CategoricalDistribution) and not self.onehot:
            self.order = sorted(range(len(distribution.choices)),
                                key=lambda i: distribution.choices[i])
        elif isinstance(distribution, FloatDistribution | IntDistribution):
            low, high = float(distribution.low), float(distribution.high)
            step = distribution.step
            if isinstance(distribution, IntDistribution) or step is not None:
                low, high = low - step / 2, high + step / 2
            if distribution.log:
                low, high = math.log(low), math.log(high)
            self.low, self.high = low, high

    def encode(self, value) -> np.ndarray:
        d = self.distribution
        if isinstance(d, CategoricalDistribution):
            index = d.to_internal_repr(value)
            if self.onehot:
                column = np.zeros(self.width)
                column[int(index)] = 1.0
                return column
            rank = self.order.index(int(index))
            return np.array([rank / (len(self.order) - 1) if len(self.order) > 1 else 0.5])
        x = math.log(value) if d.log else float(value)
        if self.high == self.low:
            return np.array([0.5])
        return np.array([(x - self.low) / (self.high - self.low)])

    def decode(self, columns: np.ndarray):
        """Values of rows of this coordinate's columns (shape (n, width)), snapped to feasible."""
        d = self.distribution
        if isinstance(d, CategoricalDistribution):
            if self.onehot:
                indices = np.argmax(columns, axis=1)
            else:
                ranks = np.rint(np.clip(columns[:, 0], 0, 1) * (len(self.order) - 1))
                indices = [self.order[int(r)] for r in ranks]
            return [d.choices[int(i)] for i in indices]
        x = self.low + np.clip(columns[:, 0], 0, 1) * (self.high - self.low)
        if d.log:
            x = np.exp(x)
        if d.step is not None:
            count = math.floor((d.high - d.low) / d.step + 1e-9)
            k = np.clip(np.rint((x - d.low) / d.step), 0, count)
            x = d.low + k * d.step
        x = np.clip(x, d.low, d.high)
        if isinstance(d, IntDistribution):
            return [int(v) for v in np.rint(x)]
        if d.step is not None:  # 0.30000000000000004 -> 0.3
            return [float(f"{v:.12g}") for v in x]
        return [float(v) for v in x]


class _Encoding:
    """The search space as the unit cube [0, 1]^dim (names sorted, so the order is fixed)."""

    def __init__(self, space: dict[str, BaseDistribution]):
        self.coordinates, start = [], 0
        for name in sorted(space):
            coordinate = _Coordinate(name, space[name], start)
            self.coordinates.append(coordinate)
            start += coordinate.width
        self.dim = start
        self.onehot = np.zeros(self.dim, dtype=bool)
        for c in self.coordinates:
            self.onehot[c.start:c.start + c.width] = c.onehot

    def encode(self, params: dict[str, Any]) -> np.ndarray:
        return np.concatenate([c.encode(params[c.name]) for c in self.coordinates])

    def decode_all(self, points: np.ndarray) -> list[dict[str, Any]]:
        columns = {c.name: c.decode(points[:, c.start:c.start + c.width])
                   for c in self.coordinates}
        return [{name: values[i] for name, values in columns.items()}
                for i in range(len(points))]

    def snap(self, points: np.ndarray) -> np.ndarray:
        """Each point moved to the encoding of the feasible point it decodes to."""
        return np.array([self.encode(p) for p in self.decode_all(points)])

    def random(self, rng: np.random.Generator, n: int) -> np.ndarray:
        points = rng.uniform(size=(n, self.dim))
        for c in self.coordinates:
            if c.onehot:
                block = np.zeros((n, c.width))
                block[np.arange(n), rng.integers(c.width, size=n)] = 1.0
                points[:, c.start:c.start + c.width] = block
        return points

    def perturb(self, rng: np.random.Generator, centers: np.ndarray, n: int,
                scale: float, swap: float = 0.2) -> np.ndarray:
        """n neighbours of each center: Gaussian moves, and now and then another category."""
        points = np.repeat(centers, n, axis=0)
        moved = np.clip(points + rng.normal(0, scale, size=points.shape), 0, 1)
        points[:, ~self.onehot] = moved[:, ~self.onehot]
        fresh = self.random(rng, len(points))
        for c in self.coordinates:
            if c.onehot:
                swap_rows = rng.uniform(size=len(points)) < swap
                cols = slice(c.start, c.start + c.width)
                points[swap_rows, cols] = fresh[swap_rows, cols]
        return points


def expected_improvement(mean: np.ndarray, std: np.ndarray, best: float,
                         xi: float = 0.01) -> np.ndarray:
    """EI of a maximization at points with these posterior means and deviations."""
    from scipy.stats import norm

    std = np.maximum(std, 1e-9)
    improvement = mean - best - xi
    z = improvement / std
    return improvement * norm.cdf(z) + std * norm.pdf(z)


class GPSampler(BaseSampler):
    """Gaussian-process Bayesian optimization with expected improvement (see the module doc).

    n_startup_trials: completed trials sampled at random before the GP takes over.
    n_candidates: random points of the unit cube scored per suggestion (plus 64 neighbours of
    each of the 5 best trials).
    """

    def __init__(self, *, seed: int | None = None, n_startup_trials: int = 5,
                 n_candidates: int = 2000):
        self._seed = 0 if seed is None else int(seed)
        self._n_startup_trials = max(1, int(n_startup_trials))
        self._n_candidates = int(n_candidates)
        self._random = RandomSampler(seed=seed)
        self._search_space = IntersectionSearchSpace()

    def reseed_rng(self) -> None:
        self._random.reseed_rng()

    def infer_relative_search_space(self, study: Study,
                                    trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return {name: d for name, d in self._search_space.calculate(study).items()
                if not d.single()}

    def sample_independent(self, study: Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        return self._random.sample_independent(study, trial, param_name, param_distribution)

    def sample_relative(self, study: Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        from threadpoolctl import threadpool_limits  # scikit-learn's own dependency

        self._raise_error_if_multi_objective(study)
        if not search_space:
            return {}
        completed = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                     if _inside(t, search_space) and t.value is not None
                     and math.isfinite(t.value)]
        if len(completed) < self._n_startup_trials:
            return {}
        running = [t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
                   if t.number != trial.number and _inside(t, search_space)]
        sign = -1.0 if study.direction == StudyDirection.MINIMIZE else 1.0
        rng = np.random.default_rng([self._seed, trial.number])
        encoding = _Encoding(search_space)
        # A few dozen points: BLAS threads only cost here (ten times slower with 2 on 2 cores).
        with threadpool_limits(limits=1, user_api="blas"):
            return self._suggest(encoding, rng,
                                 np.array([encoding.encode(t.params) for t in completed]),
                                 np.array([sign * t.value for t in completed]),
                                 [encoding.encode(t.params) for t in running])

    def _suggest(self, encoding: _Encoding, rng: np.random.Generator, observed: np.ndarray,
                 values: np.ndarray, pending: list[np.ndarray]) -> dict[str, Any]:
        gp = _fit(encoding.dim, observed, values, pending, rng)
        best = (values.max() - values.mean()) / (values.std() or 1.0)

        def scored(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            points = np.unique(encoding.snap(points), axis=0)
            mean, std = gp.predict(points, return_std=True)
            return points, expected_improvement(mean, std, best)

        top = observed[np.argsort(-values)[:5]]
        candidates, scores = scored(np.vstack([encoding.random(rng, self._n_candidates),
                                               encoding.perturb(rng, top, 64, 0.05)]))
        for scale in (0.02, 0.005):  # refine around the best few, in smaller and smaller steps
            leaders = candidates[np.argsort(-scores)[:3]]
            near, near_scores = scored(encoding.perturb(rng, leaders, 100, scale, swap=0.0))
            candidates = np.vstack([candidates, near])
            scores = np.concatenate([scores, near_scores])
        return encoding.decode_all(candidates[np.argmax(scores)][None, :])[0]


def _inside(trial: FrozenTrial, space: dict[str, BaseDistribution]) -> bool:
    """The trial has every parameter of the space, each inside its distribution."""
    for name, distribution in space.items():
        if name not in trial.params:
            return False
        try:
            if not distribution._contains(distribution.to_internal_repr(trial.params[name])):
                return False
        except ValueError:
            return False
    return True


def _fit(dim: int, observed: np.ndarray, values: np.ndarray, pending: list[np.ndarray],
         rng: np.random.Generator):
    """The GP on standardized values; pending points believed at the GP's own mean there."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.gaussian_process import GaussianProcessRegressor
    from sklearn.gaussian_process.kernels import ConstantKernel, Matern, WhiteKernel

    y = (values - values.mean()) / (values.std() or 1.0)
    kernel = (ConstantKernel(1.0, (1e-2, 1e2))
              * Matern(length_scale=np.full(dim, 0.5), length_scale_bounds=(1e-2, 1e2), nu=2.5)
              + WhiteKernel(1e-3, (1e-6, 1e-1)))
    gp = GaussianProcessRegressor(kernel, normalize_y=False, n_restarts_optimizer=2,
                                  random_state=int(rng.integers(2**31 - 1)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        gp.fit(observed, y)
    if not pending:
        return gp
    # Kriging believer: the running trials as if they returned the predicted mean, with the
    # kernel kept. The mean stays, the uncertainty there shrinks, so EI looks elsewhere.
    pending = np.array(pending)
    believer = GaussianProcessRegressor(gp.kernel_, normalize_y=False, optimizer=None)
    return believer.fit(np.vstack([observed, pending]),
                        np.concatenate([y, gp.predict(pending)]))
