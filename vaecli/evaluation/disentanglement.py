"""Disentanglement metrics against ground-truth factors (the shapes dataset keeps them): MIG,
and disentanglement_lib's DCI, SAP, FactorVAE and BetaVAE scores (below).

MIG, the mutual information gap (Chen et al. 2018, "Isolating Sources of Disentanglement"):
for each factor v_k, the gap between the two latent dimensions that share the most mutual
information with it, divided by its entropy H(v_k); MIG is the mean over factors, in [0, 1].
As in disentanglement_lib, the codes are the posterior means, each dimension discretized into
20 equal-width bins.
"""

from __future__ import annotations

import math

import torch

NUM_BINS = 20


def discretize(codes: torch.Tensor, bins: int = NUM_BINS) -> torch.Tensor:
    """Each column of (N, D) codes into `bins` equal-width bins over its own range -> int64."""
    low, high = codes.min(0).values, codes.max(0).values
    width = (high - low).clamp(min=1e-12) / bins
    return ((codes - low) / width).floor().clamp(0, bins - 1).long()


def entropy(values: torch.Tensor) -> float:
    """H(v) in nats of a discrete variable (N,) from its empirical distribution."""
    p = torch.bincount(values - values.min()).double()
    p = p[p > 0] / values.numel()
    return float(-(p * p.log()).sum())


def mutual_info(a: torch.Tensor, b: torch.Tensor) -> float:
    """I(a; b) in nats of two discrete variables (N,) from their empirical joint."""
    a, b = a - a.min(), b - b.min()
    nb = int(b.max()) + 1
    joint = torch.bincount(a * nb + b, minlength=(int(a.max()) + 1) * nb).double().view(-1, nb)
    joint = joint / joint.sum()
    pa, pb = joint.sum(1, keepdim=True), joint.sum(0, keepdim=True)
    nz = joint > 0
    return float((joint[nz] * (joint[nz] / (pa * pb).expand_as(joint)[nz]).log()).sum())


def mig(codes: torch.Tensor, factors: torch.Tensor, factor_names: list[str] | None = None) -> dict:
    """MIG of (N, D) continuous codes against (N, K) integer factors.

    Returns {"mig": mean gap, "factors": [{name, mig, entropy, top_dim, mi_top, second_dim,
    mi_second}]}; factors that never vary (entropy 0) are reported but left out of the mean.
    """
    if codes.shape[1] < 2:
        raise ValueError("MIG needs at least two latent dimensions")
    binned = discretize(codes.double())
    names = factor_names or [f"factor{k}" for k in range(factors.shape[1])]
    rows, gaps = [], []
    for k, name in enumerate(names):
        h = entropy(factors[:, k])
        mi = torch.tensor([mutual_info(binned[:, j], factors[:, k]) for j in range(binned.shape[1])])
        top = torch.topk(mi, 2)
        gap = float((top.values[0] - top.values[1]) / h) if h > 0 else None
        if gap is not None:
            gaps.append(gap)
        rows.append({"name": name, "mig": gap, "entropy": h, "top_dim": int(top.indices[0]),
                     "mi_top": float(top.values[0]), "second_dim": int(top.indices[1]),
                     "mi_second": float(top.values[1])})
    return {"mig": sum(gaps) / len(gaps) if gaps else 0.0, "factors": rows}


# ---------------------------------------------------------------------------------------------
# The rest of disentanglement_lib's suite (Locatello et al. 2019): DCI, SAP, the FactorVAE score
# and the BetaVAE score. Definitions and default sample counts as in google-research/
# disentanglement_lib (evaluation/metrics/{dci,sap_score,factor_vae,beta_vae}.py and the gin
# configs of its study); written here in torch with scikit-learn's estimators, random draws from a
# torch.Generator (so figures match its definitions, not its exact random numbers).

METRICS = ("mig", "dci", "sap", "factor_vae", "beta_vae")
NUM_TRAIN, NUM_TEST = 10_000, 5_000  # points for DCI, SAP and the two scores' training / evaluation
BATCH = 64  # observations behind one point of the FactorVAE and BetaVAE scores
NUM_VARIANCE = 10_000  # observations for the FactorVAE score's global variances
PRUNE_THRESHOLD = 0.05  # FactorVAE score: dimensions with a standard deviation under this are collapsed


class FactorGrid:
    """A dataset holding every combination of its ground-truth factors once (shapes, dSprites, 3D
    Shapes), with the code of each image: observations can then be drawn for any factors, as
    disentanglement_lib's ground_truth_data does."""

    def __init__(self, factors: torch.Tensor, codes: torch.Tensor):
        factors = factors.long()
        self.sizes = (factors.max(0).values + 1).tolist()
        self._radix = torch.tensor([math.prod(self.sizes[k + 1:]) for k in range(len(self.sizes))])
        keys = (factors * self._radix).sum(1)
        total = math.prod(self.sizes)
        if len(keys) != total or torch.unique(keys).numel() != total:
            raise ValueError(f"the factor metrics need every combination of the factors once ({total}); "
                             f"this data has {torch.unique(keys).numel()} distinct of {len(keys)} images")
        self.lookup = torch.empty(total, dtype=torch.long)
        self.lookup[keys] = torch.arange(len(keys))
        self.codes = codes.double()
        self.varying = [k for k, size in enumerate(self.sizes) if size > 1]

    def sample_factors(self, n: int, generator: torch.Generator) -> torch.Tensor:
        return torch.stack([torch.randint(size, (n,), generator=generator) for size in self.sizes], dim=1)

    def codes_of(self, factors: torch.Tensor) -> torch.Tensor:
        return self.codes[self.lookup[(factors * self._radix).sum(-1)]]

    def sample(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """n (code, factors) pairs of uniformly drawn factors: (n, D), (n, K)."""
        factors = self.sample_factors(n, generator)
        return self.codes_of(factors), factors


def _entropy_normalized(p: torch.Tensor, dim: int) -> torch.Tensor:
    """The entropy of each distribution along `dim` (normalized there), in base `p.shape[dim]`."""
    p = p / p.sum(dim, keepdim=True)
    return -(p * p.log()).sum(dim) / math.log(p.shape[dim])


def dci_scores(importance: torch.Tensor) -> tuple[float, float]:
    """Disentanglement and completeness (Eastwood & Williams 2018) of an importance matrix (codes x
    factors): 1 - the entropy of each code's importance over factors (base K), weighted by the
    code's share of the total; likewise per factor over codes (base D)."""
    importance = importance.double()
    eps = 1e-11  # as disentanglement_lib: an all-zero row counts as uniform
    per_code = 1 - _entropy_normalized(importance + eps, dim=1)
    per_factor = 1 - _entropy_normalized(importance + eps, dim=0)
    weights = importance if importance.sum() > 0 else torch.ones_like(importance)
    code_weight, factor_weight = weights.sum(1) / weights.sum(), weights.sum(0) / weights.sum()
    return float((per_code * code_weight).sum()), float((per_factor * factor_weight).sum())


def dci(codes_train, factors_train, codes_test, factors_test) -> dict:
    """DCI with gradient boosted trees (scikit-learn's GradientBoostingClassifier, its defaults),
    one per factor: the importances are the trees' feature importances; informativeness is the
    classifiers' accuracy (train and test)."""
    from sklearn.ensemble import GradientBoostingClassifier

    importance = torch.zeros(codes_train.shape[1], factors_train.shape[1], dtype=torch.float64)
    train_acc, test_acc = [], []
    for k in range(factors_train.shape[1]):
        model = GradientBoostingClassifier(random_state=0).fit(codes_train.numpy(), factors_train[:, k].numpy())
        importance[:, k] = torch.from_numpy(abs(model.feature_importances_))
        train_acc.append(float((model.predict(codes_train.numpy()) == factors_train[:, k].numpy()).mean()))
        test_acc.append(float((model.predict(codes_test.numpy()) == factors_test[:, k].numpy()).mean()))
    disentanglement, completeness = dci_scores(importance)
    return {"disentanglement": disentanglement, "completeness": completeness,
            "informativeness_train": sum(train_acc) / len(train_acc),
            "informativeness_test": sum(test_acc) / len(test_acc), "importance": importance.tolist()}


def sap_from_matrix(scores: torch.Tensor) -> float:
    """SAP (Kumar et al. 2018) of a (codes x factors) score matrix: per factor, the gap between its
    best and second-best code, averaged over factors."""
    top = torch.topk(scores.double(), 2, dim=0).values
    return float((top[0] - top[1]).mean())


def sap(codes_train, factors_train, codes_test, factors_test, continuous: bool = False) -> dict:
    """SAP, as disentanglement_lib: for discrete factors (its default) the score of code i for
    factor k is the test accuracy of a linear SVM (C = 0.01, balanced classes) predicting k from
    code i alone (a single threshold-like rule per class, so multi-class factors score well under
    1 even for a perfect code); for continuous factors the squared correlation of code i and
    factor k on the training points (0 for a constant code)."""
    from sklearn.svm import LinearSVC

    scores = torch.zeros(codes_train.shape[1], factors_train.shape[1], dtype=torch.float64)
    for i in range(codes_train.shape[1]):
        for k in range(factors_train.shape[1]):
            if continuous:
                pair = torch.stack([codes_train[:, i].double(), factors_train[:, k].double()])
                cov = torch.cov(pair)
                scores[i, k] = cov[0, 1] ** 2 / (cov[0, 0] * cov[1, 1]) if cov[0, 0] > 1e-12 else 0.0
                continue
            model = LinearSVC(C=0.01, class_weight="balanced")
            model.fit(codes_train[:, i:i + 1].numpy(), factors_train[:, k].numpy())
            scores[i, k] = float((model.predict(codes_test[:, i:i + 1].numpy()) == factors_test[:, k].numpy()).mean())
    return {"sap": sap_from_matrix(scores), "scores": scores.tolist()}


def _fixed_factor_batch(grid: FactorGrid, generator: torch.Generator, batch: int) -> tuple[int, torch.Tensor]:
    """A factor drawn among the varying ones and a batch of factors sharing its value."""
    k = grid.varying[int(torch.randint(len(grid.varying), (), generator=generator))]
    factors = grid.sample_factors(batch, generator)
    factors[:, k] = factors[0, k]
    return k, factors


def factor_vae_score(grid: FactorGrid, generator: torch.Generator, batch: int = BATCH, num_train: int = NUM_TRAIN,
                     num_eval: int = NUM_TEST, num_variance: int = NUM_VARIANCE,
                     threshold: float = PRUNE_THRESHOLD) -> dict:
    """The FactorVAE score (Kim & Mnih 2018): fix one factor in a batch, divide each code's variance
    in the batch by its variance over the data, take the dimension with the smallest ratio (among
    those not collapsed); a majority-vote classifier from that dimension to the fixed factor,
    trained on num_train batches; its accuracy on num_eval others."""
    global_var = grid.codes_of(grid.sample_factors(num_variance, generator)).var(0, unbiased=True)
    active = global_var.sqrt() >= threshold
    if not active.any():
        return {"train_accuracy": 0.0, "eval_accuracy": 0.0, "num_active_dims": 0}
    active_index = active.nonzero().squeeze(1)

    def votes(n: int) -> torch.Tensor:
        table = torch.zeros(len(grid.sizes), grid.codes.shape[1], dtype=torch.long)
        for _ in range(n):
            k, factors = _fixed_factor_batch(grid, generator, batch)
            local = grid.codes_of(factors).var(0, unbiased=True)
            table[k, int(active_index[torch.argmin(local[active] / global_var[active])])] += 1
        return table

    train, evaluation = votes(num_train), votes(num_eval)
    classifier = train.argmax(0)  # each dimension votes for the factor it was most often the argmin of
    columns = torch.arange(train.shape[1])
    return {"train_accuracy": float(train[classifier, columns].sum() / train.sum()),
            "eval_accuracy": float(evaluation[classifier, columns].sum() / evaluation.sum()),
            "num_active_dims": int(active.sum())}


def beta_vae_score(grid: FactorGrid, generator: torch.Generator, batch: int = BATCH, num_train: int = NUM_TRAIN,
                   num_eval: int = NUM_TEST) -> dict:
    """The BetaVAE score (Higgins et al. 2017): pairs of batches sharing one factor's value; the
    mean absolute difference of their codes is a point labelled by that factor; a logistic
    regression (scikit-learn's defaults) trained on num_train points, its accuracy on num_eval."""
    from sklearn.linear_model import LogisticRegression

    def points(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        features, labels = torch.zeros(n, grid.codes.shape[1], dtype=torch.float64), torch.zeros(n, dtype=torch.long)
        for j in range(n):
            k = grid.varying[int(torch.randint(len(grid.varying), (), generator=generator))]
            first, second = grid.sample_factors(batch, generator), grid.sample_factors(batch, generator)
            second[:, k] = first[:, k]
            features[j] = (grid.codes_of(first) - grid.codes_of(second)).abs().mean(0)
            labels[j] = k
        return features, labels

    x_train, y_train = points(num_train)
    x_eval, y_eval = points(num_eval)
    model = LogisticRegression(random_state=0).fit(x_train.numpy(), y_train.numpy())
    return {"train_accuracy": float(model.score(x_train.numpy(), y_train.numpy())),
            "eval_accuracy": float(model.score(x_eval.numpy(), y_eval.numpy()))}


def factor_metrics(codes: torch.Tensor, factors: torch.Tensor, metrics: tuple[str, ...], seed: int = 0,
                   num_train: int = NUM_TRAIN, num_test: int = NUM_TEST, batch: int = BATCH,
                   num_variance: int = NUM_VARIANCE) -> dict:
    """DCI, SAP, FactorVAE and BetaVAE scores (those named in `metrics`) of the codes of a full
    factor grid; each from its own generator seeded with `seed`."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning

    grid = FactorGrid(factors, codes)
    with warnings.catch_warnings():  # scikit-learn's defaults, as disentanglement_lib uses them, may stop
        warnings.simplefilter("ignore", ConvergenceWarning)  # at max_iter: that is part of the definition
        return _factor_metrics(grid, metrics, seed, num_train, num_test, batch, num_variance)


def _factor_metrics(grid: FactorGrid, metrics: tuple[str, ...], seed: int, num_train: int, num_test: int, batch: int,
                    num_variance: int) -> dict:
    out: dict = {}
    if not grid.varying:
        raise ValueError("no factor of this data varies")
    if "dci" in metrics or "sap" in metrics:
        generator = torch.Generator().manual_seed(seed)
        # Varying factors only, as disentanglement_lib exposes them (its latent_factor_indices): a
        # factor with one value has nothing to predict (scikit-learn refuses a single class).
        train, test = grid.sample(num_train, generator), grid.sample(num_test, generator)
        train, test = (train[0], train[1][:, grid.varying]), (test[0], test[1][:, grid.varying])
        if "dci" in metrics:
            out["dci"] = dci(*train, *test)
        if "sap" in metrics:
            out["sap"] = sap(*train, *test)
    if "factor_vae" in metrics:
        out["factor_vae"] = factor_vae_score(grid, torch.Generator().manual_seed(seed), batch, num_train, num_test,
                                             num_variance)
    if "beta_vae" in metrics:
        out["beta_vae"] = beta_vae_score(grid, torch.Generator().manual_seed(seed), batch, num_train, num_test)
    return out


def evaluate(codes: torch.Tensor, factors: torch.Tensor, names: list[str], metrics: tuple[str, ...], seed: int = 0,
             points: int = NUM_TRAIN) -> dict:
    """The metrics named in `metrics` of the codes (N, D) of a dataset with ground-truth factors
    (N, K). On a full factor grid, MIG is computed on `points` observations of uniformly drawn
    factors (disentanglement_lib's mig.num_train = 10,000) and the others as factor_metrics does;
    on data that is not a full grid, MIG on every image and the others refused (ValueError)."""
    out: dict = {}
    try:
        grid = FactorGrid(factors, codes)
    except ValueError:
        if any(m != "mig" for m in metrics):
            raise
        grid = None
    if "mig" in metrics:
        if grid is not None:
            mig_codes, mig_factors = grid.sample(points, torch.Generator().manual_seed(seed))
        else:
            mig_codes, mig_factors = codes, factors
        out.update(mig(mig_codes, mig_factors, names))
        out["mig_points"] = len(mig_codes)
    rest = tuple(m for m in metrics if m != "mig")
    if rest:
        out.update(factor_metrics(codes, factors, rest, seed, num_train=points, num_test=max(1, points // 2),
                                  num_variance=points))
    return out
