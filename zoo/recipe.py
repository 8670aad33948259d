"""Recipes: the declarative description of a model, validated by pydantic at load time.

A recipe is YAML read with ``yaml.safe_load`` (no tags, no code). Validation runs in two phases,
both reported as one :class:`pydantic.ValidationError` titled with the recipe's file:

1. structure -- the schema below (``extra="forbid"`` everywhere but block arguments);
2. blocks -- every ``{block: name, ...}`` is looked up in the registry, its kind checked against
   where it stands (item encoder, encoder layer, fusion, readout, head) and its arguments
   validated against the block constructor's signature and type hints.

Each error names the place inside the recipe (``encoder[1].parallel[0].d_state``), the line in the
file, and what is allowed (``did you mean "ds_gate"?``).
"""

from __future__ import annotations

import copy
import difflib
import inspect
import typing
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from zoo.pretrained import TagSpec, check_tags
from zoo.registry import CONTEXT_ARGS, BlockRegistryError, get_block, unknown_block_message


class BlockSpec(BaseModel):
    """One block: ``{block: name, arg: value, ...}``, or just ``name`` when it takes no arguments."""

    model_config = ConfigDict(extra="allow")
    block: str

    @model_validator(mode="before")
    @classmethod
    def _from_name(cls, value: Any) -> Any:
        return {"block": value} if isinstance(value, str) else value

    @property
    def args(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class Sequential(BaseModel):
    """Layers applied one after another."""

    model_config = ConfigDict(extra="forbid")
    sequential: list[Layer] = Field(min_length=1)


class Parallel(BaseModel):
    """Branches applied to the same input, combined by a fusion block: ``fuse([f1(x), f2(x), ...])``."""

    model_config = ConfigDict(extra="forbid")
    parallel: list[Layer] = Field(min_length=1)
    fuse: BlockSpec


class Residual(BaseModel):
    """``Norm(x + Dropout(f(x)))`` (post-norm, SASRec/Mamba4Rec), or ``x + Dropout(f(Norm(x)))`` with ``norm_first``."""

    model_config = ConfigDict(extra="forbid")
    residual: Union[Layer, list[Layer]]
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    norm: Literal["layernorm", "rmsnorm", "none"] = "layernorm"
    norm_eps: float = Field(1e-12, gt=0.0)
    norm_first: bool = False


class Repeat(BaseModel):
    """``times`` independent copies of ``layers`` (each copy has its own weights)."""

    model_config = ConfigDict(extra="forbid")
    repeat: int = Field(ge=1)
    layers: list[Layer] = Field(min_length=1)


COMBINATORS = ("sequential", "parallel", "residual", "repeat")


def _layer_kind(value: Any) -> str | None:
    if isinstance(value, str):
        return "<block>"
    if isinstance(value, BaseModel):
        return {BlockSpec: "<block>", Sequential: "<sequential>", Parallel: "<parallel>", Residual: "<residual>", Repeat: "<repeat>"}.get(type(value))
    if isinstance(value, dict):
        keys = [k for k in COMBINATORS if k in value]
        if "block" in value and not keys:
            return "<block>"
        if len(keys) == 1 and "block" not in value:
            return f"<{keys[0]}>"
    return None


Layer = Annotated[
    Union[
        Annotated[BlockSpec, Tag("<block>")],
        Annotated[Sequential, Tag("<sequential>")],
        Annotated[Parallel, Tag("<parallel>")],
        Annotated[Residual, Tag("<residual>")],
        Annotated[Repeat, Tag("<repeat>")],
    ],
    Discriminator(
        _layer_kind,
        custom_error_type="layer",
        custom_error_message="a layer is a block ({block: name, ...} or a name) or exactly one of "
        "sequential / parallel (+ fuse) / residual / repeat (+ layers)",
    ),
]


class TrainConfig(BaseModel):
    """Training defaults a recipe carries (the trainer and CLI may override them)."""

    model_config = ConfigDict(extra="forbid")
    objective: Literal["last", "all", "masked", "random_cut"] = "last"
    loss: Literal["ce", "sampled_softmax", "bce"] = "ce"
    num_negatives: int = Field(100, ge=1, description="losses sampled_softmax / bce: negatives per target")
    negatives: Literal["uniform", "unseen"] = Field(
        "uniform",
        description="losses sampled_softmax / bce: how training negatives are drawn. 'uniform': uniformly from all "
        "items except the positive, with replacement; 'unseen': num_negatives distinct items, uniformly from the items "
        "outside the user's training sequence (ConvRec §4.3)",
    )
    mask_prob: float = Field(0.2, gt=0.0, lt=1.0)
    mask_last_prob: float = Field(
        0.1, ge=0.0, le=1.0,
        description="objective masked: share of windows that mask only their last item (BERT4Rec §3.6)",
    )
    windows: Literal["cover", "recent"] = Field(
        "cover",
        description="objectives all / masked: windows of max_len covering each whole training sequence ('cover'), "
        "or only its newest max_len items ('recent', the original SASRec)",
    )
    window_step: int | None = Field(
        None, ge=1,
        description="objective all: a window trains only its newest window_step targets, the rest of its max_len "
        "items being history, so windows overlap and each target sees at least max_len - window_step items "
        "before it (1 = every prefix, as RecBole trains); default max_len (disjoint windows)",
    )
    window_shift: bool = Field(
        False,
        description="objective all with windows 'cover': every epoch, each user's newest window trains a random "
        "1..window_step of the newest targets and the older windows follow back from it, so a target's place in its "
        "window (the history it is trained with) changes from epoch to epoch; False: the grid ends at the last item",
    )
    optimizer: str = "adam"
    lr: float = Field(1e-3, gt=0.0)
    weight_decay: float = Field(0.0, ge=0.0)
    scheduler: str | None = None
    warmup_epochs: int = Field(0, ge=0)
    batch_size: int = Field(256, ge=1)
    epochs: int = Field(200, ge=1)
    patience: int = Field(10, ge=1)
    grad_clip: float | None = Field(None, gt=0.0)
    ema_decay: float | None = Field(
        None, gt=0.0, lt=1.0,
        description="keep an exponential moving average of the weights, ema = decay * ema + (1 - decay) * weights after "
        "every optimiser step (timm's ModelEmaV3; the first step copies), and validate, test and publish it instead of "
        "the raw weights; None: no average",
    )
    valid_metric: str = "ndcg@10"
    eval_batch_size: int | None = Field(
        None, ge=1, description="examples per evaluation batch; None: zoo.evaluate's default (scores of a batch within 64 MB)")
    eval_precision: Literal["fp32", "bf16"] = Field(
        "fp32", description="validation and test evaluation under bf16 autocast ('bf16'; item scores stay fp32) or fp32")
    eval_protocol: Literal["full", "sampled"] = Field(
        "full",
        description="the ranking protocol of validation (early stopping, the best weights) and of the reported test: "
        "'full' ranks each target among all items; 'sampled' among itself and eval_negatives items drawn outside its "
        "history (seed 0), as papers that report 1 + 100 candidates do; the test is then also reported with full ranking",
    )
    eval_negatives: int = Field(100, ge=1, description="eval_protocol sampled: the sampled items each target is ranked against")


class Recipe(BaseModel):
    """A whole model: header, dimensions, item encoder -> encoder -> readout -> head, training defaults."""

    model_config = ConfigDict(extra="forbid")
    name: str
    paper: str | None = None
    fidelity: Literal["paper", "code", "baseline", "hybrid"] = "baseline"
    description: str = ""
    deviations: list[str] = []
    d_model: int = Field(64, ge=1)
    max_len: int = Field(50, ge=1)
    num_items: int | None = Field(None, ge=1)
    init: Literal["blocks", "recbole", "recbole_gru4rec"] = Field(
        "blocks",
        description="'blocks': each block's own initialisation; 'recbole': afterwards every Linear weight and "
        "Embedding ~ N(0, 0.02) and Linear biases 0, as RecBole's _init_weights does to its SASRec / BERT4Rec and "
        "the official Mamba4Rec / SIGMA code (docs/models/mamba4rec.md, 'RecBole initialisation'); "
        "'recbole_gru4rec': afterwards Embeddings Xavier-normal and the first GRU layer's weights Xavier-uniform, "
        "as RecBole's GRU4Rec does (docs/models/baselines.md, 'Initialisation')",
    )
    item_encoder: BlockSpec = BlockSpec(block="item_id")
    encoder: list[Layer] = []
    readout: BlockSpec = BlockSpec(block="last")
    head: BlockSpec = BlockSpec(block="tied_dot")
    train: TrainConfig = TrainConfig()
    pretrained: dict[str, TagSpec] = Field(
        {},
        description="published weights of this recipe, by tag: {ml-100k: {dataset, hf_hub_id, revision, default}}; "
        "zoo.create('NAME.TAG', pretrained=True) loads one (zoo.pretrained)",
    )

    @field_validator("pretrained")
    @classmethod
    def _tags(cls, tags: dict[str, TagSpec]) -> dict[str, TagSpec]:
        return check_tags(tags)


for _model in (Sequential, Parallel, Residual, Repeat, Recipe):
    _model.model_rebuild()


# ---------------------------------------------------------------- phase 2: blocks against the registry

_ARG_MODELS: dict[type, type[BaseModel]] = {}


def block_arguments_model(cls: type) -> type[BaseModel]:
    """A pydantic model of ``cls.__init__``'s arguments (minus those the builder supplies)."""
    if cls not in _ARG_MODELS:
        hints = typing.get_type_hints(cls.__init__)
        fields: dict[str, Any] = {}
        extra = "forbid"
        for name, param in inspect.signature(cls.__init__).parameters.items():
            if name == "self" or name in CONTEXT_ARGS:
                continue
            if param.kind is param.VAR_KEYWORD:
                extra = "allow"
                continue
            default = ... if param.default is param.empty else param.default
            fields[name] = (hints.get(name, Any), default)
        _ARG_MODELS[cls] = create_model(
            f"{cls.__name__}Arguments", __config__=ConfigDict(extra=extra, arbitrary_types_allowed=True), **fields
        )
    return _ARG_MODELS[cls]


def _check_block(spec: BlockSpec, kinds: tuple[str, ...], where: str, errors: list[tuple[str, str, Any]]) -> None:
    try:
        cls = get_block(spec.block)
    except BlockRegistryError:
        errors.append((f"{where}.block", unknown_block_message(spec.block, kinds[0] if len(kinds) == 1 else None), spec.block))
        return
    if cls.kind not in kinds:
        hint = {
            "readout": "readouts go in `readout:`, after the encoder",
            "fusion": "fusions go in the `fuse:` of a `parallel` layer",
            "item-encoder": "item encoders go in `item_encoder:`",
            "head": "heads go in `head:`",
            "sequence": "sequence blocks go in `encoder:`",
        }[cls.kind]
        errors.append((f"{where}.block", f"block {spec.block!r} is a {cls.kind} block, expected {' or '.join(kinds)}; {hint}", spec.block))
        return
    args = spec.args
    for name in CONTEXT_ARGS:
        if name in args:
            errors.append((f"{where}.{name}", f"{name!r} is set once for the whole model, at the top of the recipe, not per block", args[name]))
    args = {k: v for k, v in args.items() if k not in CONTEXT_ARGS}
    schema = block_arguments_model(cls)
    try:
        schema.model_validate(args)
    except ValidationError as exc:
        allowed = list(schema.model_fields)
        for err in exc.errors():
            field = ".".join(str(p) for p in err["loc"])
            msg = err["msg"]
            if err["type"] == "extra_forbidden":
                close = difflib.get_close_matches(str(err["loc"][0]), allowed, n=1, cutoff=0.5)
                hint = f"did you mean {close[0]!r}? " if close else ""
                msg = f"unknown argument {field!r} for block {spec.block!r}; {hint}(allowed: {', '.join(allowed) or 'none'})"
            elif err["type"] == "missing":
                msg = f"block {spec.block!r} needs argument {field!r}"
            else:
                msg = f"block {spec.block!r}: {msg}"
            errors.append((f"{where}.{field}", msg, err.get("input")))


def _check_layer(layer: Layer, here: str, errors: list) -> None:
    if isinstance(layer, BlockSpec):
        _check_block(layer, ("sequence",), here, errors)
    elif isinstance(layer, Sequential):
        _check_layers(layer.sequential, f"{here}.sequential", errors)
    elif isinstance(layer, Repeat):
        _check_layers(layer.layers, f"{here}.layers", errors)
    elif isinstance(layer, Residual):
        if isinstance(layer.residual, list):
            _check_layers(layer.residual, f"{here}.residual", errors)
        else:
            _check_layer(layer.residual, f"{here}.residual", errors)
    elif isinstance(layer, Parallel):
        _check_layers(layer.parallel, f"{here}.parallel", errors)
        _check_block(layer.fuse, ("fusion",), f"{here}.fuse", errors)
        _check_fusion_inputs(layer, f"{here}.fuse", errors)


def _check_layers(layers: list, where: str, errors: list) -> None:
    for i, layer in enumerate(layers):
        _check_layer(layer, f"{where}[{i}]", errors)


def _check_fusion_inputs(layer: Parallel, where: str, errors: list) -> None:
    try:
        cls = get_block(layer.fuse.block)
    except BlockRegistryError:
        return
    n = len(layer.parallel)
    low, high = getattr(cls, "min_inputs", 2), getattr(cls, "max_inputs", None)
    if n < low or (high is not None and n > high):
        need = f"exactly {low}" if low == high else f"at least {low}" if high is None else f"{low} to {high}"
        errors.append((where, f"fusion {layer.fuse.block!r} combines {need} streams, but the parallel layer has {n} branch(es)", n))


def check_blocks(recipe: Recipe) -> list[tuple[str, str, Any]]:
    """Phase 2: every block exists, stands where its kind belongs, and gets valid arguments."""
    errors: list[tuple[str, str, Any]] = []
    _check_block(recipe.item_encoder, ("item-encoder",), "item_encoder", errors)
    _check_layers(recipe.encoder, "encoder", errors)
    _check_block(recipe.readout, ("readout",), "readout", errors)
    _check_block(recipe.head, ("head",), "head", errors)
    return errors


# ---------------------------------------------------------------- loading, overrides, error reporting


def _format_loc(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, str) and part.startswith("<"):
            continue
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _path_parts(path: str) -> list[str | int]:
    parts: list[str | int] = []
    for piece in path.replace("[", ".").replace("]", "").split("."):
        if piece:
            parts.append(int(piece) if piece.isdigit() else piece)
    return parts


def _line_of(node: yaml.Node | None, path: str) -> int | None:
    """1-based line of the deepest YAML node on ``path`` (None without a source file)."""
    if node is None:
        return None
    line = node.start_mark.line + 1
    for part in _path_parts(path):
        child = None
        if isinstance(node, yaml.MappingNode):
            child = next((v for k, v in node.value if k.value == part), None)
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            child = node.value[part]
        if child is None:
            break
        node, line = child, child.start_mark.line + 1
    return line


def _raise(title: str, errors: list[tuple[str, str, Any]], root: yaml.Node | None) -> typing.NoReturn:
    details: list[InitErrorDetails] = []
    for where, msg, value in errors:
        line = _line_of(root, where)
        at = f" (line {line})" if line else ""
        details.append(
            InitErrorDetails(type=PydanticCustomError("recipe", "{message}", {"message": msg + at}), loc=(where,), input=value)
        )
    raise ValidationError.from_exception_data(title, details)


def validate_recipe(data: Any, source: str = "recipe", root: yaml.Node | None = None) -> Recipe:
    """Validate a recipe mapping (structure, then blocks); errors are titled with ``source``."""
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as exc:
        _raise(source, [(_format_loc(e["loc"]), e["msg"], e.get("input")) for e in exc.errors()], root)
    return checked(recipe, source, root)


def checked(recipe: Recipe, source: str = "recipe", root: yaml.Node | None = None) -> Recipe:
    """``recipe`` after phase 2 (blocks against the registry); a recipe built in code needs it too."""
    errors = check_blocks(recipe)
    if errors:
        _raise(source, errors, root)
    return recipe


def apply_overrides(data: dict, overrides: dict[str, Any]) -> dict:
    """A copy of recipe ``data`` with dotted-path overrides applied: ``{"encoder.0.d_state": 64}``.

    String values are parsed as YAML scalars/flow collections (``"64"`` -> 64, ``"[1, 2]"`` -> list),
    so CLI ``--set key=value`` and Python keyword overrides behave alike.
    """
    result = copy.deepcopy(data)
    for path, value in overrides.items():
        if isinstance(value, str):
            value = yaml.safe_load(value) if value.strip() else value
        parts = _path_parts(path)
        if not parts:
            raise ValueError(f"override {path!r}: empty path")
        node: Any = result
        for depth, part in enumerate(parts[:-1]):
            here = ".".join(str(p) for p in parts[: depth + 1])
            if isinstance(node, list):
                if not isinstance(part, int) or part >= len(node):
                    raise ValueError(f"override {path!r}: {here!r} is not an index of a {len(node)}-item list")
                node = node[part]
            elif isinstance(node, dict):
                if isinstance(node.get(part), str):
                    node[part] = {"block": node[part]}
                node = node.setdefault(part, {})
            else:
                raise ValueError(f"override {path!r}: {here!r} is a value, not a mapping or list")
        last = parts[-1]
        if isinstance(node, list):
            if not isinstance(last, int) or last >= len(node):
                raise ValueError(f"override {path!r}: {last!r} is not an index of a {len(node)}-item list")
        elif not isinstance(node, dict):
            raise ValueError(f"override {path!r}: its parent is a value, not a mapping or list")
        node[last] = value
    return result


def read_yaml(path: Path) -> tuple[dict, yaml.Node | None]:
    """Read a recipe file safely: plain YAML only (``safe_load``), returning data and its node tree."""
    text = path.read_text(encoding="utf-8")
    try:
        data = yaml.safe_load(text)
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a recipe is a YAML mapping (name:, d_model:, encoder: ...), got {type(data).__name__}")
    return data, root


def load_recipe(path: str | Path, overrides: dict[str, Any] | None = None) -> Recipe:
    """Read, override and validate the recipe file at ``path``."""
    path = Path(path)
    data, root = read_yaml(path)
    if overrides:
        data = apply_overrides(data, overrides)
    return validate_recipe(data, source=str(path), root=root)

