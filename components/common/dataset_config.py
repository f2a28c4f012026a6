"""The dataset configuration: which source columns feed which role (label, id, features).

A user swaps in their own data by editing this YAML, not code. Every step reads it through
`load_dataset_config` so the checks below run once, early, with messages that name the key.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from components.common.errors import StepError

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
DEFAULT_CONFIG = "cfpb"
ROLES = ("categorical", "bucketized", "text", "numeric")
THRESHOLD_POLICIES = ("fixed", "max_f1", "min_cost")
CALIBRATION_METHODS = ("platt", "isotonic", "none")
REDACTION_MODES = ("hash", "drop")


@dataclass(frozen=True)
class LabelSpec:
    feature: str
    positive: tuple[str, ...]
    negative: tuple[str, ...]


@dataclass(frozen=True)
class ValidationThresholds:
    skew_linf: float = 0.1
    drift_linf: float = 0.1
    drift_js: float = 0.1
    label_linf: float = 0.1
    min_domain_mass: float = 0.99
    no_distribution_checks: tuple[str, ...] = ()


@dataclass(frozen=True)
class PreprocessingSpec:
    vocabulary_size: int = 200
    vocabulary_sizes: dict[str, int] = field(default_factory=dict)
    oov_buckets: int = 2
    zip_prefix_digits: int = 3
    zip_vocabulary_size: int = 1000
    text_max_tokens: int = 20000
    text_sequence_length: int = 256

    def vocabulary_size_of(self, feature: str) -> int:
        return int(self.vocabulary_sizes.get(feature, self.vocabulary_size))


@dataclass(frozen=True)
class ThresholdPolicy:
    """How train chooses the model's decision threshold (`evaluation.decision_threshold`).

    `fixed`: `value`. `max_f1`: the threshold of highest F1 on the calibration holdout.
    `min_cost`: the threshold of lowest `cost_false_positive * FP + cost_false_negative * FN`
    on the calibration holdout. `value` is also the threshold of a model that records none.
    A plain number in the YAML means `fixed` at that value.
    """

    policy: str = "fixed"
    value: float = 0.5
    cost_false_positive: float = 1.0
    cost_false_negative: float = 1.0


@dataclass(frozen=True)
class CalibrationSpec:
    """How train calibrates the model's probabilities (the `calibration` section).

    `method`: `platt` (sigmoid of an affine map of the score's logit), `isotonic` (a
    monotonic piecewise-linear map) or `none`. `holdout_fraction`: share of the train split
    (chosen by a hash of the id) kept out of training to fit the calibration and choose the
    decision threshold.
    """

    method: str = "platt"
    holdout_fraction: float = 0.1


@dataclass(frozen=True)
class EvaluationSpec:
    decision_threshold: ThresholdPolicy = field(default_factory=ThresholdPolicy)
    slices: tuple[str, ...] = ()
    min_slice_size: int = 30
    counterfactual_sample: int = 300
    thresholds: dict[str, float] = field(default_factory=lambda: {"auc": 0.6})
    baseline_tolerance: dict[str, float] = field(default_factory=lambda: {"auc": 0.01})


@dataclass(frozen=True)
class PrivacySpec:
    """Personal data in the rows (the `privacy` section).

    `personal_fields`: the fields (column names of the config) that identify or describe a
    person; the prediction log never stores them in clear. Without the key, the text features
    (free text is where personal data hides). `mode`: `hash` (a keyed hash, HMAC-SHA256 with
    the key in the PREDICTION_LOG_KEY environment variable; without a key the fields are
    dropped) or `drop`.
    """

    personal_fields: tuple[str, ...] = ()
    mode: str = "hash"


@dataclass(frozen=True)
class ModelCardSpec:
    """What the model card says the model is for (the `model_card` section)."""

    intended_use: str = ""
    out_of_scope: str = ""


@dataclass(frozen=True)
class DatasetConfig:
    name: str
    source: str
    columns: dict[str, tuple[str, ...]]
    label: LabelSpec
    id_feature: str
    features: dict[str, tuple[str, ...]]
    # Features whose column a source may lack (read as missing values; ingest warns and counts).
    optional_features: tuple[str, ...] = ()
    delimiter: str = ","
    max_field_bytes: int = 1 << 20
    eval_fraction: float = 0.1
    split_salt: str = ""
    validation: ValidationThresholds = field(default_factory=ValidationThresholds)
    preprocessing: PreprocessingSpec = field(default_factory=PreprocessingSpec)
    evaluation: EvaluationSpec = field(default_factory=EvaluationSpec)
    calibration: CalibrationSpec = field(default_factory=CalibrationSpec)
    privacy: PrivacySpec = field(default_factory=PrivacySpec)
    model_card: ModelCardSpec = field(default_factory=ModelCardSpec)
    raw: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def feature_names(self) -> list[str]:
        """Model input features, in role order."""
        return [name for role in ROLES for name in self.features.get(role, ())]

    def role_of(self, feature: str) -> str | None:
        for role in ROLES:
            if feature in self.features.get(role, ()):
                return role
        return None

    def fingerprint(self) -> str:
        """A hash of the configuration's content, for lineage (not of the file's bytes)."""
        canonical = json.dumps(self.raw, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def _as_tuple(value, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and all(isinstance(v, str | int | float) for v in value):
        return tuple(str(v) for v in value)
    raise StepError(f"{where}: expected a string or a list of strings, got {value!r}")


def resolve_config_path(ref: str | None) -> str:
    """A built-in config name (`cfpb`), a local path, or an s3:// URI."""
    ref = ref or DEFAULT_CONFIG
    builtin = CONFIG_DIR / f"{ref}.yaml"
    if "/" not in ref and not ref.endswith((".yaml", ".yml")) and builtin.exists():
        return str(builtin)
    return ref


def load_dataset_config(ref: str | None = None) -> DatasetConfig:
    from components.common import documents, storage

    path = resolve_config_path(ref)
    if not storage.is_s3(path) and not os.path.exists(path):
        builtins = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
        raise StepError(f"{path}: dataset config not found (built-in configs: {builtins})")
    return parse_dataset_config(documents.read_yaml(path, "dataset config"), path)


def parse_dataset_config(raw, source: str = "<config>") -> DatasetConfig:
    if not isinstance(raw, dict):
        raise StepError(f"{source}: the dataset config must be a YAML mapping")

    def need(mapping: dict, key: str, where: str):
        if key not in mapping or mapping[key] in (None, ""):
            raise StepError(f"{source}: missing required key {where}{key}")
        return mapping[key]

    columns_raw = need(raw, "columns", "")
    if not isinstance(columns_raw, dict) or not columns_raw:
        raise StepError(f"{source}: columns: expected a mapping of feature name -> header(s)")
    columns = {str(k): _as_tuple(v, f"{source}: columns.{k}") for k, v in columns_raw.items()}
    for name, headers in columns.items():
        if not headers:
            raise StepError(f"{source}: columns.{name}: give at least one source header")

    label_raw = need(raw, "label", "")
    if not isinstance(label_raw, dict):
        raise StepError(f"{source}: label: expected a mapping with feature/positive/negative")
    label = LabelSpec(
        feature=str(need(label_raw, "feature", "label.")),
        positive=_as_tuple(need(label_raw, "positive", "label."), f"{source}: label.positive"),
        negative=_as_tuple(need(label_raw, "negative", "label."), f"{source}: label.negative"),
    )
    overlap = {v.strip().lower() for v in label.positive} & {
        v.strip().lower() for v in label.negative
    }
    if overlap:
        raise StepError(f"{source}: label: {sorted(overlap)} is both positive and negative")
    id_feature = str(need(raw, "id_feature", ""))

    features_raw = raw.get("features") or {}
    if not isinstance(features_raw, dict):
        raise StepError(f"{source}: features: expected a mapping of role -> feature names")
    unknown_roles = set(features_raw) - set(ROLES)
    if unknown_roles:
        raise StepError(
            f"{source}: features: unknown role(s) {sorted(unknown_roles)}; use {list(ROLES)}"
        )
    features = {
        role: _as_tuple(features_raw.get(role), f"{source}: features.{role}") for role in ROLES
    }
    seen: dict[str, str] = {}
    for role, names in features.items():
        for name in names:
            if name in seen:
                raise StepError(
                    f"{source}: feature {name!r} is listed under both {seen[name]} and {role}"
                )
            seen[name] = role
    if not seen:
        raise StepError(f"{source}: features: list at least one feature")
    for name in [*seen, label.feature, id_feature]:
        if name not in columns:
            raise StepError(
                f"{source}: feature {name!r} has no entry under columns (which source header?)"
            )
    if label.feature in seen:
        raise StepError(f"{source}: the label {label.feature!r} cannot also be a feature")
    optional_features = _as_tuple(raw.get("optional_features"), f"{source}: optional_features")
    for name in optional_features:
        if name not in seen:
            raise StepError(f"{source}: optional_features: {name!r} is not a feature (the label "
                            "cannot be optional; a missing id column is always allowed)")

    csv_raw = raw.get("csv") or {}
    delimiter = str(csv_raw.get("delimiter", ","))
    if len(delimiter) != 1:
        raise StepError(f"{source}: csv.delimiter must be one character, got {delimiter!r}")
    split_raw = raw.get("split") or {}
    eval_fraction = float(split_raw.get("eval_fraction", 0.1))
    validation_raw = dict(raw.get("validation") or {})
    no_checks = _as_tuple(
        validation_raw.pop("no_distribution_checks", None),
        f"{source}: validation.no_distribution_checks",
    )
    known = set(ValidationThresholds.__dataclass_fields__) - {"no_distribution_checks"}
    unknown = set(validation_raw) - known
    if unknown:
        raise StepError(f"{source}: validation: unknown key(s) {sorted(unknown)}")
    thresholds = ValidationThresholds(
        **{k: float(v) for k, v in validation_raw.items()}, no_distribution_checks=no_checks
    )
    preprocessing = _section(raw, "preprocessing", PreprocessingSpec, source)
    evaluation_raw = raw.get("evaluation") or {}
    if not isinstance(evaluation_raw, dict):
        raise StepError(f"{source}: evaluation: expected a mapping")
    evaluation_raw = dict(evaluation_raw)
    policy = parse_threshold_policy(evaluation_raw.pop("decision_threshold", None),
                                    f"{source}: evaluation.decision_threshold")
    evaluation = dataclasses.replace(
        _section({"evaluation": evaluation_raw}, "evaluation", EvaluationSpec, source),
        decision_threshold=policy)
    calibration = _section(raw, "calibration", CalibrationSpec, source)
    if calibration.method not in CALIBRATION_METHODS:
        raise StepError(f"{source}: calibration.method: {calibration.method!r} is not one of "
                        f"{list(CALIBRATION_METHODS)}")
    needs_holdout = calibration.method != "none" or policy.policy != "fixed"
    if not (0.0 < calibration.holdout_fraction < 1.0 if needs_holdout
            else 0.0 <= calibration.holdout_fraction < 1.0):
        raise StepError(f"{source}: calibration.holdout_fraction must be between 0 and 1 "
                        f"(exclusive; 0 only with method none and a fixed threshold), got "
                        f"{calibration.holdout_fraction}")
    for name in evaluation.slices:
        if name not in seen:
            raise StepError(f"{source}: evaluation.slices: {name!r} is not a feature")
    privacy = parse_privacy(raw.get("privacy"), columns, features, source)
    model_card = _section(raw, "model_card", ModelCardSpec, source)
    return DatasetConfig(
        name=str(raw.get("name") or "dataset"),
        source=source,
        columns=columns,
        label=label,
        id_feature=id_feature,
        features=features,
        optional_features=optional_features,
        delimiter=delimiter,
        max_field_bytes=int(csv_raw.get("max_field_bytes", 1 << 20)),
        eval_fraction=check_eval_fraction(eval_fraction, f"{source}: split.eval_fraction"),
        split_salt=str(split_raw.get("salt") or ""),
        validation=thresholds,
        preprocessing=preprocessing,
        evaluation=evaluation,
        calibration=calibration,
        privacy=privacy,
        model_card=model_card,
        raw=raw,
    )


def parse_privacy(value, columns: dict, features: dict, source: str) -> PrivacySpec:
    """The `privacy` section: personal_fields (known column names; absent: the text
    features) and mode (hash | drop)."""
    if value is None:
        value = {}
    if not isinstance(value, dict):
        raise StepError(f"{source}: privacy: expected a mapping with personal_fields and mode")
    unknown = sorted(set(value) - set(PrivacySpec.__dataclass_fields__))
    if unknown:
        raise StepError(f"{source}: privacy: unknown key(s) {unknown}")
    if "personal_fields" in value:
        fields = _as_tuple(value["personal_fields"], f"{source}: privacy.personal_fields")
    else:
        fields = tuple(features.get("text", ()))
    strangers = [name for name in fields if name not in columns]
    if strangers:
        raise StepError(f"{source}: privacy.personal_fields: {strangers} are not columns of the "
                        f"config (known: {sorted(columns)})")
    mode = str(value.get("mode", "hash"))
    if mode not in REDACTION_MODES:
        raise StepError(f"{source}: privacy.mode: {mode!r} is not one of "
                        f"{list(REDACTION_MODES)}")
    return PrivacySpec(personal_fields=fields, mode=mode)


def parse_threshold_policy(value, where: str) -> ThresholdPolicy:
    """`evaluation.decision_threshold`: a number (fixed at it) or a mapping of ThresholdPolicy's
    fields; absent: fixed at 0.5."""
    if value is None:
        return ThresholdPolicy()
    if isinstance(value, int | float) and not isinstance(value, bool):
        values = {"policy": "fixed", "value": value}
    elif isinstance(value, dict):
        values = dict(value)
    else:
        raise StepError(f"{where}: expected a number or a mapping with policy "
                        f"({'/'.join(THRESHOLD_POLICIES)}), got {value!r}")
    unknown = sorted(set(values) - set(ThresholdPolicy.__dataclass_fields__))
    if unknown:
        raise StepError(f"{where}: unknown key(s) {unknown}")
    policy = str(values.pop("policy", "fixed"))
    if policy not in THRESHOLD_POLICIES:
        raise StepError(f"{where}.policy: {policy!r} is not one of {list(THRESHOLD_POLICIES)}")
    numbers = {}
    for key, number in values.items():
        if isinstance(number, bool) or not isinstance(number, int | float) or \
                not math.isfinite(number):
            raise StepError(f"{where}.{key}: expected a number, got {number!r}")
        numbers[key] = float(number)
    parsed = ThresholdPolicy(policy=policy, **numbers)
    if not 0.0 <= parsed.value <= 1.0:
        raise StepError(f"{where}.value: must be between 0 and 1, got {parsed.value}")
    if parsed.cost_false_positive < 0 or parsed.cost_false_negative < 0:
        raise StepError(f"{where}: costs cannot be negative (cost_false_positive "
                        f"{parsed.cost_false_positive}, cost_false_negative "
                        f"{parsed.cost_false_negative})")
    if policy == "min_cost" and not (parsed.cost_false_positive > 0
                                     and parsed.cost_false_negative > 0):
        raise StepError(f"{where}: policy min_cost needs cost_false_positive and "
                        "cost_false_negative above 0")
    return parsed


def _section(raw: dict, key: str, cls, source: str):
    """A typed config section: unknown keys and wrong types are errors naming the key."""
    values = raw.get(key) or {}
    if not isinstance(values, dict):
        raise StepError(f"{source}: {key}: expected a mapping")
    fields = cls.__dataclass_fields__
    unknown = set(values) - set(fields)
    if unknown:
        raise StepError(f"{source}: {key}: unknown key(s) {sorted(unknown)}")
    defaults = cls()
    parsed = {}
    for name, value in values.items():
        default = getattr(defaults, name)
        try:
            if isinstance(default, dict):
                if not isinstance(value, dict):
                    raise TypeError
                kind = int if all(isinstance(v, int) for v in default.values()) and default \
                    else float
                parsed[name] = {str(k): kind(v) for k, v in value.items()}
            elif isinstance(default, tuple):
                parsed[name] = _as_tuple(value, f"{source}: {key}.{name}")
            else:
                parsed[name] = type(default)(value)
        except (TypeError, ValueError):
            raise StepError(
                f"{source}: {key}.{name}: expected {type(default).__name__}, got {value!r}"
            ) from None
    return cls(**parsed)


def check_eval_fraction(value: float, where: str = "eval fraction") -> float:
    if not 0.0 < value < 1.0:
        raise StepError(f"{where} must be between 0 and 1 (exclusive), got {value}")
    return value
